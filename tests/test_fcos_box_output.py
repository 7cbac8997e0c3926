"""``model.fcos.box_output: exp``: FCOS's ltrb as exp of a learned per-level scale times the conv
output (the FCOS authors' parametrization), which cannot die where torchvision's ReLU does."""

from __future__ import annotations

import pytest
import torch

from detkd.errors import DetkdError
from detkd.modeling.detector import build_detector
from detkd.modeling.families.fcos import ExpRegressionHead
from detkd.recipe import config_from_dict
from test_distill_families import batch

pytestmark = pytest.mark.usefixtures("one_thread")


def fcos(box_output: str, seed: int = 0):
    tree = {"arch": "fcos", "num_classes": 4, "backbone": "resnet18", "weights_backbone": None, "out_channels": 64,
            "min_size": 128, "max_size": 128, "fcos": {"box_output": box_output}}
    torch.manual_seed(seed)
    return build_detector(config_from_dict({"model": tree}).model)


def test_the_exp_head_is_exp_of_the_scaled_conv_per_level():
    m = fcos("exp")
    head = m.head.regression_head
    assert isinstance(head, ExpRegressionHead) and head.scales.shape == (5,)
    with torch.no_grad():
        head.scales.copy_(torch.tensor([1.0, 0.5, 2.0, 1.5, 0.25]))
        feats = [torch.randn(1, 64, s, s) for s in (16, 8, 4, 2, 1)]
        ltrb, ctr = head(feats)
        want, start = [], 0
        for level, f in enumerate(feats):
            t = head.bbox_reg(head.conv(f))[0].permute(1, 2, 0).reshape(-1, 4)  # (H, W, 4) row order
            want.append(torch.exp(head.scales[level] * t))
        assert torch.allclose(ltrb[0], torch.cat(want), rtol=1e-6) and (ltrb > 0).all()
        assert ctr.shape == (1, ltrb.shape[1], 1)


@pytest.mark.parametrize("box_output, alive", [("relu", False), ("exp", True)])
def test_a_box_branch_pushed_below_zero_dies_with_relu_and_recovers_with_exp(box_output, alive):
    m = fcos(box_output)
    with torch.no_grad():
        m.head.regression_head.bbox_reg.bias.fill_(-3.0)
    m.train()
    losses = m(*batch())
    losses["bbox_regression"].backward()
    grad = m.head.regression_head.bbox_reg.weight.grad
    assert (grad.abs().sum() > 0) == alive
    if not alive:  # every ltrb exactly 0: the GIoU loss of a point box, 1, with no gradient
        assert float(losses["bbox_regression"].detach()) == pytest.approx(1.0, abs=1e-6)


def test_the_relu_default_is_torchvisions_head_and_stock_builders_refuse_exp():
    from torchvision.models.detection.fcos import FCOSRegressionHead

    assert type(fcos("relu").head.regression_head) is FCOSRegressionHead
    stock = {"arch": "fcos_resnet50_fpn", "num_classes": 4, "weights": None, "weights_backbone": None,
             "fcos": {"box_output": "exp"}}
    with pytest.raises(DetkdError, match="model.fcos.box_output is fixed by the stock builder"):
        build_detector(config_from_dict({"model": stock}).model)
