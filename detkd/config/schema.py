"""Typed configuration schema.

Every YAML key maps to a field below; unknown keys and wrong types are rejected by
:func:`detkd.config.load.load_config` with a message naming the key and the file. The
dataclasses are plain data: nothing is built while a config is parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from detkd.errors import DetkdError

STOCK_ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)


@dataclass
class ModelConfig:
    """A torchvision Faster R-CNN.

    ``arch`` is one of torchvision's stock builders or ``custom`` (backbone + FPN built
    from the fields below). All RPN/RoI settings apply to both kinds.
    """

    arch: Literal[
        "custom",
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
    ] = "custom"
    num_classes: int = 91  # including background (index 0)
    # torchvision weight enum name ("DEFAULT", "COCO_V1", ...) or a local file path.
    weights: Optional[str] = None
    weights_backbone: Optional[str] = None
    # --- custom builder ---
    backbone: Literal[
        "resnet18", "resnet34", "resnet50", "resnet101",
        "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    ] = "resnet50"
    trainable_backbone_layers: int = 3
    returned_layers: Optional[list[int]] = None  # backbone stages feeding the FPN
    out_channels: int = 256
    extra_pool_level: bool = True  # FPN "pool" level (LastLevelMaxPool)
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"  # backbone normalization
    # --- anchors (one tuple of sizes per feature level) ---
    anchor_sizes: Optional[list[list[int]]] = None
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # --- transform ---
    min_size: int = 800
    max_size: int = 1333
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # --- RPN ---
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    # --- RoI heads ---
    roi_output_size: int = 7
    representation_size: int = 1024
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100


@dataclass
class AugmentConfig:
    """Training augmentation settings (all off except flipping by default)."""

    hflip: float = 0.5  # horizontal flip probability
    scale_jitter: tuple[float, float] | None = None  # random rescale range, e.g. (0.75, 1.25)
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter, 0 = off
    min_box_size: float = 1.0  # boxes narrower/shorter than this (px) after augmentation are dropped

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip <= 1.0:
            raise DetkdError(f"augment.hflip must be in [0, 1], got {self.hflip}")
        if self.scale_jitter is not None:
            if not (isinstance(self.scale_jitter, Sequence) and len(self.scale_jitter) == 2):
                raise DetkdError(
                    f"augment.scale_jitter must be a [min, max] pair, got {self.scale_jitter!r}"
                )
            lo, hi = (float(v) for v in self.scale_jitter)
            if not 0.0 < lo <= hi:
                raise DetkdError(
                    f"augment.scale_jitter must satisfy 0 < min <= max, got {self.scale_jitter!r}"
                )
            self.scale_jitter = (lo, hi)  # YAML gives lists; normalise to a tuple
        if not 0.0 <= self.color_jitter < 1.0:
            raise DetkdError(f"augment.color_jitter must be in [0, 1), got {self.color_jitter}")
        if self.min_box_size < 0:
            raise DetkdError(f"augment.min_box_size must be >= 0, got {self.min_box_size}")



@dataclass
class DemoDataConfig:
    """The embedded demo dataset, generated (and cached) from the committed sources."""

    out_dir: str = "data/demo"
    seed: int = 0
    num_train: int = 600
    num_val: int = 150
    image_size: int = 160


@dataclass
class BaseDatasetConfig:
    """What every ``data.train`` / ``data.val`` section has, whatever its format, and the
    whole section of the default format, ``demo`` (the embedded data, generated as
    ``data.demo`` says).

    The YAML is flat: ``data.train: {type: coco, image_dir: ..., ann_file: ...}``; the
    loader picks the dataclass of ``type`` from :data:`DATASET_TYPES` and rejects options
    of another format. Each format's options dataclass subclasses this one beside its
    parser in detkd/data (``detkd.data.build.DATASETS`` registers both). ``split`` defaults
    to ``train`` in every section given in YAML (``data.val`` too): give it explicitly where
    the format uses it (voc, demo, yolo).
    """

    type: str = "demo"  # a key of detkd.data.build.DATASETS
    split: str = "train"
    skip_empty: bool = False  # drop images without boxes (training only)
    max_images: Optional[int] = None  # use only the first N images (quick checks)

    def location(self) -> str:
        """The file or directory the split is read from, for messages ('' if none)."""
        return ""


# data.<split>.type -> its options dataclass, as the config loader sees them. The formats are
# registered by the layer that owns them: detkd.data.build fills this from its DATASETS on import
# (config cannot import data). Interim: issue #19's detkd/recipe passes the registries to the
# loader as an argument instead (NOTES-mechanism.md); then this slot goes.
DATASET_TYPES: dict[str, type[BaseDatasetConfig]] = {}


@dataclass
class DataConfig:
    train: BaseDatasetConfig = field(default_factory=BaseDatasetConfig)
    val: BaseDatasetConfig = field(default_factory=lambda: BaseDatasetConfig(split="val"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # Learning-rate scaling rule: lr *= world_size * batch_size / reference_batch_size.
    scale_lr: bool = False
    reference_batch_size: int = 16


@dataclass
class SchedulerConfig:
    """Per-iteration schedule: linear warm-up, then step or cosine decay.

    ``milestones`` are in epochs (converted to iterations with the loader length).
    """

    name: Literal["step", "cosine", "constant"] = "step"
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    milestones: list[float] = field(default_factory=lambda: [8.0, 11.0])  # floats: as config.yaml reads back
    gamma: float = 0.1
    min_lr_factor: float = 0.0  # cosine floor, as a fraction of the base lr


@dataclass
class TrainConfig:
    epochs: int = 12
    max_iters: Optional[int] = None  # stop after this many iterations (overrides epochs)
    batch_size: int = 2  # per process
    workers: int = 2
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    amp: bool = False  # CUDA only; ignored with a warning on the CPU
    clip_grad_norm: Optional[float] = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    log_interval: int = 20  # iterations
    eval_interval: int = 1  # epochs; 0 = only at the end
    checkpoint_interval: int = 1  # epochs
    checkpoint_period_iters: int = 0  # also write last.pth every N iterations (0 = off)
    best_metric: str = "AP"  # key of the evaluation results that selects the best checkpoint
    sync_bn: bool = False
    # A non-finite loss skips the step (up to max_nonfinite_skips times in a row), or stops.
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    max_nonfinite_skips: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tensorboard: bool = False  # also write metrics.jsonl's fields as TensorBoard scalars (extra 'tensorboard')


@dataclass
class EvalConfig:
    metric: Literal["coco", "voc", "both"] = "coco"
    batch_size: int = 2
    evaluate_teacher: bool = False  # distillation runs: evaluate the teacher too


@dataclass
class TeacherConfig:
    """A frozen teacher: its model config and a checkpoint (a detkd checkpoint or a plain
    state dict). ``config`` names the YAML file the teacher was trained with: its ``model``
    section becomes the base of ``teacher.model``."""

    config: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoint: str = ""


@dataclass
class PKDConfig:
    """PKD (Cao et al., NeurIPS 2022): Pearson correlation of per-channel normalized FPN maps.
    Default weight 6 and levels P2-P5: MMRazor's pkd_fpn_faster-rcnn_r101_faster-rcnn_r50 config."""

    weight: float = 6.0
    levels: Optional[list[str]] = None  # student levels; None: every level but "pool" (P2-P5)


@dataclass
class CWDConfig:
    """Channel-wise distillation (Shu et al., ICCV 2021): KL between per-channel spatial
    softmaxes. Defaults tau 1, weight 10, all levels: MMRazor's cwd_fpn_frcnn config."""

    weight: float = 10.0
    temperature: float = 1.0
    levels: Optional[list[str]] = None  # None: every level, "pool" included


@dataclass
class MGDConfig:
    """Masked generative distillation (Yang et al., ECCV 2022): a generator rebuilds the
    teacher map from a randomly masked student map. alpha 2e-5, lambda 0.65: the authors' module
    defaults and RetinaNet config, MMRazor's mgd_fpn_retina (no public Faster R-CNN R101 -> R50 MGD
    config exists; docs/methods.md, section 3.3)."""

    alpha: float = 2e-5
    lambda_mask: float = 0.65
    levels: Optional[list[str]] = None  # None: every level, "pool" included


@dataclass
class FGDConfig:
    """Focal and global distillation (Yang et al., CVPR 2022): foreground/background masked
    imitation weighted by teacher attention, attention transfer and GcBlock global relation.
    Defaults: the authors' faster_rcnn_r101 -> r50 config (yzd-v/FGD)."""

    temperature: float = 0.5
    alpha: float = 5e-5  # foreground
    beta: float = 2.5e-5  # background
    gamma: float = 5e-5  # attention
    lambda_global: float = 5e-7  # global (GcBlock) relation (the paper's lambda)
    levels: Optional[list[str]] = None  # None: every level but "pool" (P2-P5)


@dataclass
class FGFIConfig:
    """Fine-grained feature imitation (Wang et al., CVPR 2019): imitation on the locations
    whose anchors overlap a ground-truth box (IoU > psi * the box's best anchor IoU).
    psi 0.5 and weight 0.01: the paper (Sec. 3.1, 4)."""

    weight: float = 0.01
    psi: float = 0.5
    levels: Optional[list[str]] = None  # None: every level (each has anchors)


@dataclass
class DistillConfig:
    """The distillation methods of one run (several may be on at once); defaults are the
    papers'. See docs/distillation_methods.md; equations and defaults: docs/methods.md.

    Chen et al. (NeurIPS 2017), on unless ``chen: false`` (the flat keys below):
    L = L_RPN + L_RCN + gamma * L_hint;  L_cls = mu * hard + (1 - mu) * soft;
    L_reg = smoothL1 + nu * L_b  (docs/methods.md, section 1).
    FPN-feature methods (docs/methods.md, section 3): a section (``pkd: {}``,
    ``fgd: {alpha: 1e-4}``...) turns the method on; ``null`` (the default) leaves it off.
    """

    chen: bool = True  # false: none of Chen et al.'s terms (a feature-method-only run)
    hint: bool = True
    rpn_soft: bool = True
    rcn_soft: bool = True
    rpn_bound: bool = True
    rcn_bound: bool = True
    mu: float = 0.5
    nu: float = 0.5
    gamma: float = 0.5
    lam: float = 1.0  # lambda: weight of the regression terms in both heads
    temperature: float = 1.0
    bg_weight: float = 1.5
    class_weighted: bool = True  # False: unweighted soft CE (ablation)
    margin: float = 0.0
    bound_kind: Literal["bounded", "l2"] = "bounded"  # l2: plain L2 to the teacher (ablation)
    hint_levels: list[str] = field(default_factory=lambda: ["0"])
    adapter: Literal["conv1x1", "identity"] = "conv1x1"
    start_epoch: int = 0  # distillation terms on from this epoch
    stop_epoch: Optional[int] = None  # ... and off from this one
    # A teacher whose config has another input size (min/max_size): "own" sees the images at
    # its own size (boxes/proposals scaled into its frame, student maps resized to its maps;
    # RPN terms refused: they compare anchor by anchor), "student" sees the student's
    # transformed batch (every term), "auto" is "own" unless Chen et al.'s RPN terms are on.
    teacher_input: Literal["auto", "own", "student"] = "auto"
    # Heterogeneous pairs: student level -> teacher level (e.g. {"0": "2"}: the student's
    # stride-16 map against the teacher's stride-16 one); unnamed levels match by name.
    level_map: Optional[dict[str, str]] = None
    pkd: Optional[PKDConfig] = None
    cwd: Optional[CWDConfig] = None
    mgd: Optional[MGDConfig] = None
    fgd: Optional[FGDConfig] = None
    fgfi: Optional[FGFIConfig] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "outputs/run"
    teacher: Optional[TeacherConfig] = None
    distill: Optional[DistillConfig] = None
