"""detkd's shared loss submodule: pure functions, plus the nn.Modules that own a method's
parameters (MGD's generator, FGD's context blocks, the classification regressors and fusion).

* ``detection``: Chen et al. (NeurIPS 2017) detection distillation terms.
* ``feature``: FPN-feature methods for detectors: PKD, CWD, MGD, FGD, fine-grained imitation.
* ``kd``: single-teacher KD, FitNet, attention transfer, similarity preserving.
* ``multi_teacher``: AVER, EBKD, AEKD, CA-MKD, FitNet-MKD.
* ``online``: deep mutual learning, feature fusion learning, SCD self-distillation.
* ``predictions``: prediction-level distillation from any teacher's detections (soft targets, pseudo-labels).

Equations and conventions: ``docs/methods.md``.
"""

from detkd.losses.detection import (
    bound_active,
    bounded_regression_loss,
    hint_loss,
    objectness_soft_ce,
    weighted_soft_ce,
)
from detkd.losses.feature import (
    FGD,
    MGD,
    GcBlock,
    MGDGenerator,
    cwd_loss,
    fgd_attention,
    fgd_loss,
    fgd_masks,
    fgfi_masks,
    masked_imitation_loss,
    match_size,
    mgd_loss,
    mgd_mask,
    pkd_loss,
)
from detkd.losses.kd import (
    ConvRegressor,
    at_loss,
    attention_map,
    fitnet_loss,
    kd_loss,
    similarity_matrix,
    sp_loss,
)
from detkd.losses.multi_teacher import (
    CAMKDRegressors,
    aekd_loss,
    aekd_weights,
    aver_loss,
    camkd_inter_loss,
    camkd_kd_loss,
    confidence_weights,
    ebkd_loss,
    ebkd_weights,
    fitnet_mkd_loss,
    solve_one_class_svm_dual,
)
from detkd.losses.multi_teacher_detection import detection_confidence_weights, weighted_box_fusion
from detkd.losses.online import FFLLosses, FusionModule, dml_losses, ffl_losses, ffl_rampup, scd_loss
from detkd.losses.predictions import score_weighted_box_loss, soft_sigmoid_loss, soft_softmax_loss, split_by_score

__all__ = [
    "bound_active", "bounded_regression_loss", "hint_loss", "objectness_soft_ce", "weighted_soft_ce",
    "FGD", "MGD", "GcBlock", "MGDGenerator", "cwd_loss", "fgd_attention", "fgd_loss",
    "fgd_masks", "fgfi_masks", "masked_imitation_loss", "match_size", "mgd_loss", "mgd_mask", "pkd_loss",
    "ConvRegressor", "at_loss", "attention_map", "fitnet_loss", "kd_loss", "similarity_matrix", "sp_loss",
    "CAMKDRegressors", "aekd_loss", "aekd_weights", "aver_loss", "camkd_inter_loss", "camkd_kd_loss",
    "confidence_weights", "ebkd_loss", "ebkd_weights", "fitnet_mkd_loss", "solve_one_class_svm_dual",
    "FFLLosses", "FusionModule", "dml_losses", "ffl_losses", "ffl_rampup", "scd_loss",
    "score_weighted_box_loss", "soft_sigmoid_loss", "soft_softmax_loss", "split_by_score",
    "detection_confidence_weights", "weighted_box_fusion",
]
