"""Typed configuration schema.

Every YAML key maps to a field below; unknown keys and wrong types are rejected by
:func:`detkd.config.load.load_config` with a message naming the key and the file. The
dataclasses are plain data: nothing is built while a config is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from detkd.data.transforms import AugmentConfig

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
class DemoDataConfig:
    """The embedded demo dataset, generated (and cached) from the committed sources."""

    out_dir: str = "data/demo"
    seed: int = 0
    num_train: int = 600
    num_val: int = 150
    image_size: int = 160


@dataclass
class DatasetConfig:
    """One split. ``coco``: ``image_dir`` + ``ann_file``; ``voc``: ``root`` (the VOC2007
    directory) + ``split``; ``demo``: the embedded demo data (``split`` is train or val)."""

    type: Literal["coco", "voc", "demo"] = "demo"
    image_dir: str = ""
    ann_file: str = ""
    root: str = ""
    split: str = "train"
    classes: Optional[list[str]] = None  # VOC class names (default: the 20 VOC classes)
    skip_empty: bool = False  # drop images without boxes
    use_difficult: bool = False  # VOC: train on difficult boxes too
    max_images: Optional[int] = None  # use only the first N images (quick checks)


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    val: DatasetConfig = field(default_factory=lambda: DatasetConfig(split="val"))
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
    milestones: list[float] = field(default_factory=lambda: [8, 11])
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
class DistillConfig:
    """Chen et al. (NeurIPS 2017) objective; defaults are the paper's.

    L = L_RPN + L_RCN + gamma * L_hint;  L_cls = mu * hard + (1 - mu) * soft;
    L_reg = smoothL1 + nu * L_b  (see ../shared/spec/methods.md, section 1).
    """

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


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "outputs/run"
    teacher: Optional[TeacherConfig] = None
    distill: Optional[DistillConfig] = None
