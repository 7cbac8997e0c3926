"""Typed configuration schema.

Every YAML key maps to a field below; unknown keys, wrong types and values out of the range
declared on a field (:func:`detkd.config.fields.option`) are rejected by the builder
(:mod:`detkd.config.build`) with a message naming the key and the file that set it; a rule
across fields of one section is its dataclass's ``broken_rule``. The dataclasses are plain
data: nothing is built while a config is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from detkd.config.fields import option, registry

# model.arch -> its detector family. An arch named like its family (or "custom", the name of
# detkd's own Faster R-CNN in earlier versions) is built on detkd's backbones; the others are
# torchvision's stock builders. Each family's builder is one file in detkd/modeling/families/
# (FAMILIES there); its options section below is model.<family> (None for Faster R-CNN).
ARCH_FAMILIES: dict[str, str] = {
    "custom": "faster_rcnn",
    "faster_rcnn": "faster_rcnn",
    "fasterrcnn_resnet50_fpn": "faster_rcnn",
    "fasterrcnn_resnet50_fpn_v2": "faster_rcnn",
    "fasterrcnn_mobilenet_v3_large_fpn": "faster_rcnn",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "faster_rcnn",
    "retinanet": "retinanet",
    "retinanet_resnet50_fpn": "retinanet",
    "retinanet_resnet50_fpn_v2": "retinanet",
    "fcos": "fcos",
    "fcos_resnet50_fpn": "fcos",
    "ssdlite": "ssdlite",
    "ssdlite320_mobilenet_v3_large": "ssdlite",
    "ssd": "ssd",
    "ssd300_vgg16": "ssd",
}
STOCK_ARCHS = tuple(arch for arch, family in ARCH_FAMILIES.items() if arch not in (family, "custom"))


@dataclass
class RetinaNetOptions:
    """``model.retinanet``: torchvision ``RetinaNet`` settings; defaults are that class's.
    The last three shape a custom-backbone head (``arch: retinanet``; None: as
    ``retinanet_resnet50_fpn``, no norm, L1 box loss, P6 from P5); the stock builders fix them
    (v1 as said, v2 GroupNorm(32), GIoU, P6 from C5)."""

    score_thresh: float = option(0.05, ge=0, le=1)
    nms_thresh: float = option(0.5, ge=0, le=1)
    detections_per_img: int = option(300, gt=0)
    topk_candidates: int = option(1000, gt=0)  # per level, before NMS
    fg_iou_thresh: float = option(0.5, ge=0, le=1)
    bg_iou_thresh: float = option(0.4, ge=0, le=1)
    head_norm: Optional[Literal["none", "group_norm"]] = None
    box_loss: Optional[Literal["l1", "smooth_l1", "giou", "diou", "ciou"]] = None
    p6_input: Optional[Literal["p5", "c5"]] = None  # what LastLevelP6P7's P6 convolves

    def broken_rule(self, at: str) -> Optional[tuple[str, str]]:
        if self.bg_iou_thresh > self.fg_iou_thresh:
            return "bg_iou_thresh", (f"'{at}bg_iou_thresh' ({self.bg_iou_thresh}) must not exceed "
                                     f"'{at}fg_iou_thresh' ({self.fg_iou_thresh})")
        return None


@dataclass
class FCOSOptions:
    """``model.fcos``: torchvision ``FCOS`` settings; defaults are that class's (its head is
    always GroupNorm(32) towers, so ``model.out_channels`` must be a multiple of 32)."""

    score_thresh: float = option(0.2, ge=0, le=1)
    nms_thresh: float = option(0.6, ge=0, le=1)
    detections_per_img: int = option(100, gt=0)
    topk_candidates: int = option(1000, gt=0)
    center_sampling_radius: float = option(1.5, gt=0)  # in strides
    p6_input: Optional[Literal["p5", "c5"]] = None  # custom backbones; None: P5 (fcos_resnet50_fpn)
    # The ltrb box output: "relu" (torchvision's ReLU, which a branch pushed below 0 never leaves) or
    # "exp" (exp of a learned per-level scale times the conv output, as the FCOS authors' code: always
    # positive, always a gradient; custom backbones)
    box_output: Literal["relu", "exp"] = "relu"


@dataclass
class SSDOptions:
    """``model.ssd``: torchvision ``SSD`` settings; defaults are ``ssd300_vgg16``'s. The input
    is warped to ``size`` x ``size`` (``model.min_size``/``max_size`` do not apply). None:
    the builder's own (stock: torchvision's; custom: ImageNet mean/std, ``[2, 3]`` ratios on
    every map, scales from ``min_ratio``/``max_ratio``). ``extra_channels``: the widths of the
    extra layers after the backbone's two maps (custom backbones)."""

    size: int = option(300, gt=0)
    score_thresh: float = option(0.01, ge=0, le=1)
    nms_thresh: float = option(0.45, ge=0, le=1)
    detections_per_img: int = option(200, gt=0)
    topk_candidates: int = option(400, gt=0)
    iou_thresh: float = option(0.5, ge=0, le=1)  # default-box matching
    positive_fraction: float = option(0.25, gt=0, le=1)  # hard negative mining keeps 3 negatives per positive
    image_mean: Optional[list[float]] = option(None, length=3)
    image_std: Optional[list[float]] = option(None, length=3, gt=0)
    aspect_ratios: Optional[list[list[int]]] = option(  # per feature map
        None, nonempty=True, ge=1, says="must list, per feature map, ratios >= 1 (each also used inverted)")
    scales: Optional[list[float]] = option(None, nonempty=True, gt=0,  # one per map + 1
                                           says="must be a non-empty list of positive numbers")
    steps: Optional[list[int]] = option(None, nonempty=True, gt=0,  # one per map
                                        says="must be a non-empty list of positive integers")
    min_ratio: float = option(0.15, ge=0, le=1)
    max_ratio: float = option(0.9, ge=0, le=1)
    extra_channels: list[int] = option(default_factory=lambda: [512, 256, 256, 256], nonempty=True, gt=0,
                                       says="must be a non-empty list of positive integers")

    def broken_rule(self, at: str) -> Optional[tuple[str, str]]:
        if not self.min_ratio < self.max_ratio:
            return "min_ratio", (f"'{at}min_ratio' ({self.min_ratio}) must be below '{at}max_ratio' "
                                 f"({self.max_ratio})")
        return None


@dataclass
class SSDliteOptions(SSDOptions):
    """``model.ssdlite``: SSDlite (depthwise heads and extra layers); defaults are
    ``ssdlite320_mobilenet_v3_large``'s."""

    size: int = option(320, gt=0)
    score_thresh: float = option(0.001, ge=0, le=1)
    nms_thresh: float = option(0.55, ge=0, le=1)
    detections_per_img: int = option(300, gt=0)
    topk_candidates: int = option(300, gt=0)
    image_mean: Optional[list[float]] = option(default_factory=lambda: [0.5, 0.5, 0.5], length=3)
    image_std: Optional[list[float]] = option(default_factory=lambda: [0.5, 0.5, 0.5], length=3, gt=0)
    min_ratio: float = option(0.2, ge=0, le=1)
    max_ratio: float = option(0.95, ge=0, le=1)
    extra_channels: list[int] = option(default_factory=lambda: [512, 256, 256, 128], nonempty=True, gt=0,
                                       says="must be a non-empty list of positive integers")


# model.<family> sections (the family's options); Faster R-CNN's keys are ModelConfig's own.
FAMILY_OPTIONS: dict[str, Optional[type]] = {
    "faster_rcnn": None,
    "retinanet": RetinaNetOptions,
    "fcos": FCOSOptions,
    "ssdlite": SSDliteOptions,
    "ssd": SSDOptions,
}


@dataclass
class ModelConfig:
    """A torchvision detector.

    ``arch`` (a key of :data:`ARCH_FAMILIES`) picks the family and the builder: a family name
    (``faster_rcnn``, alias ``custom``; ``retinanet``, ``fcos``, ``ssdlite``, ``ssd``) builds
    it on a detkd backbone from the fields below, a torchvision builder name builds the stock
    model. The RPN/RoI keys are Faster R-CNN's; the other families read ``model.<family>``
    (filled with its defaults when left out). See docs/models.md.
    """

    arch: Literal[tuple(ARCH_FAMILIES)] = "custom"
    num_classes: int = option(91, ge=2, why="background + 1 class")  # including background (index 0)
    # torchvision weight enum name ("DEFAULT", "COCO_V1", ...) or a local file path.
    weights: Optional[str] = None
    weights_backbone: Optional[str] = None
    # --- custom builder ---
    backbone: Literal[
        "resnet18", "resnet34", "resnet50", "resnet101",
        "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    ] = "resnet50"
    trainable_backbone_layers: int = 3
    returned_layers: Optional[list[int]] = None  # backbone stages feeding the FPN (None: the family's)
    out_channels: int = option(256, gt=0)
    extra_pool_level: bool = True  # FPN "pool" level (LastLevelMaxPool)
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"  # backbone normalization
    # --- anchors (one tuple of sizes per feature level) ---
    anchor_sizes: Optional[list[list[int]]] = None
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # --- transform ---
    min_size: int = option(800, gt=0)
    max_size: int = option(1333, gt=0)
    image_mean: list[float] = option(default_factory=lambda: [0.485, 0.456, 0.406], length=3)
    image_std: list[float] = option(default_factory=lambda: [0.229, 0.224, 0.225], length=3)
    # --- RPN ---
    rpn_pre_nms_top_n_train: int = option(2000, gt=0)
    rpn_pre_nms_top_n_test: int = option(1000, gt=0)
    rpn_post_nms_top_n_train: int = option(2000, gt=0)
    rpn_post_nms_top_n_test: int = option(1000, gt=0)
    rpn_nms_thresh: float = option(0.7, ge=0, le=1)
    rpn_fg_iou_thresh: float = option(0.7, ge=0, le=1)
    rpn_bg_iou_thresh: float = option(0.3, ge=0, le=1)
    rpn_batch_size_per_image: int = option(256, gt=0)
    rpn_positive_fraction: float = option(0.5, ge=0, le=1)
    # --- RoI heads ---
    roi_output_size: int = option(7, gt=0)
    representation_size: int = option(1024, gt=0)
    box_batch_size_per_image: int = option(512, gt=0)
    box_positive_fraction: float = option(0.25, ge=0, le=1)
    box_fg_iou_thresh: float = option(0.5, ge=0, le=1)
    box_bg_iou_thresh: float = option(0.5, ge=0, le=1)
    box_score_thresh: float = option(0.05, ge=0, le=1)
    box_nms_thresh: float = option(0.5, ge=0, le=1)
    box_detections_per_img: int = option(100, gt=0)
    # --- the other families' options (model.<family>; see FAMILY_OPTIONS) ---
    retinanet: Optional[RetinaNetOptions] = None
    fcos: Optional[FCOSOptions] = None
    ssdlite: Optional[SSDliteOptions] = None
    ssd: Optional[SSDOptions] = None

    def __post_init__(self) -> None:
        # The arch's own section defaults to its family's options, so a dumped config shows them.
        section = ARCH_FAMILIES.get(self.arch)
        if FAMILY_OPTIONS.get(section) is not None and getattr(self, section) is None:
            setattr(self, section, FAMILY_OPTIONS[section]())

    def broken_rule(self, at: str) -> Optional[tuple[str, str]]:
        """The options section of another family than the arch's (each section's own values
        are checked by its dataclass; how the parts fit a backbone where the model is built,
        in detkd/modeling/families/)."""
        family = ARCH_FAMILIES[self.arch]
        for name, options in FAMILY_OPTIONS.items():
            if options is not None and name != family and getattr(self, name) is not None:
                return name, (f"'{at}{name}' is set but '{at}arch' {self.arch!r} is a {family} "
                              f"(the {name} options apply to the {name} archs only)")
        for part in ("rpn", "box"):  # Faster R-CNN's matchers: background below foreground
            bg, fg = getattr(self, f"{part}_bg_iou_thresh"), getattr(self, f"{part}_fg_iou_thresh")
            if bg > fg:
                return f"{part}_bg_iou_thresh", (f"'{at}{part}_bg_iou_thresh' ({bg}) must not exceed "
                                                 f"'{at}{part}_fg_iou_thresh' ({fg})")
        return None


@dataclass
class AugmentConfig:
    """Training augmentation settings (all off except flipping by default)."""

    hflip: float = option(0.5, ge=0, le=1)  # horizontal flip probability
    scale_jitter: tuple[float, float] | None = None  # random rescale range, e.g. (0.75, 1.25)
    color_jitter: float = option(0.0, ge=0, lt=1)  # strength of brightness/contrast/saturation jitter, 0 = off
    min_box_size: float = option(1.0, ge=0)  # boxes narrower/shorter than this (px) after augmentation are dropped

    def broken_rule(self, at: str) -> Optional[tuple[str, str]]:
        if self.scale_jitter is not None and not 0.0 < self.scale_jitter[0] <= self.scale_jitter[1]:
            return "scale_jitter", f"'{at}scale_jitter' must satisfy 0 < min <= max, got {self.scale_jitter!r}"
        return None


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
    loader picks the dataclass of ``type`` from the registry ``datasets`` and rejects options
    of another format. Each format's options dataclass subclasses this one beside its
    parser in detkd/data (``detkd.data.build.DATASETS`` registers both). ``split`` defaults
    to ``train`` in every section given in YAML (``data.val`` too): give it explicitly where
    the format uses it (voc, demo, yolo).
    """

    type: str = "demo"  # a key of detkd.data.build.DATASETS
    split: str = "train"
    skip_empty: bool = False  # drop images without boxes (training only)
    max_images: Optional[int] = option(None, gt=0)  # use only the first N images (quick checks)

    def location(self) -> str:
        """The file or directory the split is read from, for messages ('' if none)."""
        return ""


@dataclass
class DataConfig:
    # data.<split>.type picks the section's dataclass from the registry "datasets", which
    # detkd.recipe passes to the loader from detkd.data.build.DATASETS (config cannot import data).
    train: BaseDatasetConfig = registry("datasets", by="type", default_factory=BaseDatasetConfig)
    val: BaseDatasetConfig = registry("datasets", by="type", default_factory=lambda: BaseDatasetConfig(split="val"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    # Images without annotations for a distillation run (a folder or glob, {type: images, root: DIR}
    # or {type: images, glob: PATTERN}, or any format, whose labels are then ignored): mixed into
    # every training batch, pseudo-labelled by the teacher (docs/methods.md, section 5).
    unlabeled: Optional[BaseDatasetConfig] = registry("datasets", by="type", default_factory=lambda: None)
    # The unlabeled images' share of each batch (None: the two sets' size ratio)
    unlabeled_share: Optional[float] = option(None, gt=0, lt=1)


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = option(0.02, gt=0)
    momentum: float = option(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = option(1e-4, ge=0)
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
    warmup_iters: int = option(500, ge=0)
    warmup_factor: float = option(0.001, ge=0, le=1)
    milestones: list[float] = field(default_factory=lambda: [8.0, 11.0])  # floats: as config.yaml reads back
    gamma: float = option(0.1, gt=0)
    min_lr_factor: float = option(0.0, ge=0, le=1)  # cosine floor, as a fraction of the base lr


@dataclass
class TrainConfig:
    epochs: int = option(12, gt=0)
    max_iters: Optional[int] = option(None, gt=0)  # stop after this many iterations (overrides epochs)
    batch_size: int = option(2, gt=0)  # per process
    workers: int = option(2, ge=0)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    amp: bool = False  # CUDA only; ignored with a warning on the CPU
    clip_grad_norm: Optional[float] = option(None, gt=0)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    log_interval: int = option(20, gt=0)  # iterations
    eval_interval: int = option(1, ge=0)  # epochs; 0 = only at the end
    checkpoint_interval: int = option(1, gt=0)  # epochs
    checkpoint_period_iters: int = option(0, ge=0)  # also write last.pth every N iterations (0 = off)
    best_metric: str = "AP"  # key of the evaluation results that selects the best checkpoint
    sync_bn: bool = False
    # A non-finite loss skips the step (up to max_nonfinite_skips times in a row), or stops.
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    max_nonfinite_skips: int = option(10, ge=0)
    # Loss terms stuck at a constant, at 0 or exploding over a window of steps: warn, stop or off.
    health: Literal["warn", "stop", "off"] = "warn"
    health_window: int = option(50, ge=2)  # iterations
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tensorboard: bool = False  # also write metrics.jsonl's fields as TensorBoard scalars (extra 'tensorboard')


@dataclass
class EvalConfig:
    metric: Literal["coco", "voc", "both"] = "coco"
    batch_size: int = option(2, gt=0)
    evaluate_teacher: bool = False  # distillation runs: evaluate the teacher too


@dataclass
class TeacherConfig:
    """A frozen teacher: its model config and a checkpoint (a detkd checkpoint or a plain
    state dict). ``config`` names the YAML file the teacher was trained with: its ``model``
    section becomes the base of ``teacher.model``. Or an offline teacher: ``detections``, a
    file or folder of detections written by any detector (docs/methods.md, "Prediction-level
    distillation"), which feeds ``distill.predictions`` only."""

    config: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoint: str = ""
    # A COCO results JSON, detkd predict's detections.json or a folder of YOLO txt with confidences.
    detections: Optional[str] = None
    drop_unknown_classes: bool = False  # detections of classes outside the label map: leave out (else refuse)


@dataclass
class DistillConfig:
    """The distillation of one run: the run-wide keys below and one section per method,
    ``distill: {chen: {...}, pkd: {weight: 6.0}}``. A method is on exactly when its section
    is there (``{}``: its defaults; ``null`` drops a section a ``_base_`` file set). Each
    method's options, defaults, ranges, equation and source are in its own file in
    detkd/distill/methods/ (docs/distillation_methods.md); the loader takes them from
    ``METHODS`` there (detkd.recipe passes them in: this layer does not import them)."""

    start_epoch: int = option(0, ge=0)  # distillation terms on from this epoch
    # data.unlabeled: the teacher's detections scoring at least this are the ground truth of an
    # unlabeled image (hard pseudo-labels, tau_hi; Zoph et al., NeurIPS 2020)
    pseudo_thresh: float = option(0.5, ge=0, le=1)
    stop_epoch: Optional[int] = option(None, ge=1)  # ... and off from this one
    # A teacher whose config has another input size (min/max_size): "own" sees the images at
    # its own size (boxes/proposals scaled into its frame, student maps resized to its maps;
    # terms that compare the nets anchor by anchor are refused), "student" sees the student's
    # transformed batch (every term), "auto" is "own" unless an enabled method compares anchors
    # (Chen et al.'s RPN terms).
    teacher_input: Literal["auto", "own", "student"] = "auto"
    # Heterogeneous pairs: student level -> teacher level (e.g. {"p6": "pool"}); the levels it does
    # not name pair by ``pairing``: "stride" (each student map with the teacher's map of the same
    # stride) or "index" (the i-th map of the method's levels on each side, the student's map resized
    # to the teacher's: MMRazor's heterogeneous PKD config; never the default).
    level_map: Optional[dict[str, str]] = None
    pairing: Literal["stride", "index"] = "stride"
    # name -> the method's config section (in METHODS order); YAML: distill.<name>.
    methods: dict[str, Any] = registry("methods")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "outputs/run"
    teacher: Optional[TeacherConfig] = None
    distill: Optional[DistillConfig] = None
