"""Typed configuration of classification runs (``tools/train_cls.py``).

The same YAML system as detection (``_base_`` inheritance, ``--opts`` overrides, unknown
keys and wrong types rejected with the key and the file): :func:`load_cls_config` reuses
:mod:`detkd.config.load` and only swaps the schema. The optimizer and schedule sections are
detection's :class:`~detkd.config.schema.OptimizerConfig` and
:class:`~detkd.config.schema.SchedulerConfig` with classification defaults.

Loss weights default to the values of detkd's method specification (``docs/methods.md``,
section 2) and the papers: KD T = 4; FitNet 100; AT 1000; SP 3000; CA-MKD 1 x L_KD +
50 x L_inter with L_inter skipped in epoch 0; DML T = 1; FFL T = 3 with an 80-epoch ramp-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from detkd.config.load import apply_overrides, build_dataclass, load_yaml_tree, parse_overrides
from detkd.config.schema import OptimizerConfig, SchedulerConfig
from detkd.errors import DetkdError

Arch = Literal["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
               "resnet18", "resnet34", "resnet50", "mobilenet_v2"]

MethodName = Literal["baseline", "kd", "fitnet", "at", "sp", "aver", "ebkd", "aekd", "camkd", "fitnet_mkd",
                     "dml", "dml_e", "ffl", "scd"]

SINGLE_TEACHER = ("kd", "fitnet", "at", "sp")
MULTI_TEACHER = ("aver", "ebkd", "aekd", "camkd", "fitnet_mkd")
ONLINE = ("dml", "dml_e", "ffl")
NO_TEACHER = ("baseline", "scd", *ONLINE)


@dataclass
class NetConfig:
    """One network. CIFAR ResNets (``resnet8`` ... ``resnet110``, depth 6n + 2) take a
    ``width`` (first-stage channels, default 16); torchvision nets (``resnet18/34/50``,
    ``mobilenet_v2``) take a ``stem``. ``checkpoint``: required for a teacher (a
    ``model_final.pth``/``peerK_final.pth`` of an earlier run, or a plain state dict);
    optional initial weights for a student or peer."""

    arch: Arch = "resnet8"
    width: Optional[int] = None
    stem: Literal["cifar", "imagenet"] = "cifar"
    checkpoint: Optional[str] = None


@dataclass
class ClsDataConfig:
    """``fmnist``: the embedded Fashion-MNIST data (4000 training images, 28x28 gray) tested
    on ``test_split``: ``t10k`` the whole 10,000-image Fashion-MNIST test split
    (``data/sources/fashion_mnist_t10k.npz``), ``subset`` the 1000 test images of the subset
    file; ``root`` may point at another .npz with the same arrays (its own test arrays are
    used then). ``cifar10``/``cifar100``: the
    python-pickle files; ``root`` is the folder holding ``cifar-10-batches-py`` /
    ``cifar-100-python`` (or that folder itself)."""

    dataset: Literal["fmnist", "cifar10", "cifar100"] = "fmnist"
    root: str = ""
    train_subset: Optional[int] = None  # use N training images (a seeded random choice)
    test_subset: Optional[int] = None  # use N test images
    test_split: Literal["t10k", "subset"] = "t10k"  # fmnist without root: see the docstring
    subset_seed: int = 0
    # Semi-supervised (baseline, dml, dml_e): the labels of a seeded random (1 - fraction)
    # of the training set are hidden; those samples enter only the KL terms.
    labelled_fraction: float = 1.0
    augment: bool = True  # random crop with `crop_padding` zero padding + horizontal flip
    crop_padding: int = 4
    hflip: bool = True
    pad_to_32: bool = True  # fmnist: zero-pad 28x28 to 32x32
    gray_to_rgb: bool = False  # fmnist: repeat the gray channel 3 times (in_channels 3)


@dataclass
class MethodConfig:
    name: MethodName = "baseline"
    ce_weight: float = 1.0  # weight of the cross-entropy on the labels (student methods)
    # --- logit KD (kd, aver, ebkd, aekd, camkd)
    temperature: float = 4.0
    kd_weight: float = 1.0
    # --- feature methods; stage indices count from 0 (shallow) and may be negative (-1 = last)
    fitnet_weight: float = 100.0
    fitnet_stage: int = -1  # student and teacher stage paired for the hint
    fitnet_teacher_stage: Optional[int] = None  # default: same as fitnet_stage
    at_weight: float = 1000.0
    at_stages: Optional[list[int]] = None  # student stages; null = all, paired with the teacher's from the deepest
    sp_weight: float = 3000.0
    sp_stage: int = -1
    # --- AEKD
    aekd_c_tol: float = 0.6
    # --- CA-MKD / FitNet-MKD (last stage maps, one regressor per teacher)
    camkd_inter_weight: float = 50.0
    fitnet_mkd_weight: float = 50.0
    camkd_inter_start_epoch: int = 1  # CA-MKD intermediate term off before this epoch (docs/methods.md: skip epoch 0)
    camkd_detach_inter_weights: bool = False  # authors' code: not detached
    # --- DML / DML_e
    dml_update: Literal["sequential", "simultaneous"] = "sequential"
    # --- FFL
    ffl_temperature: float = 3.0
    ffl_rampup_epochs: float = 80.0
    ffl_eps: float = 0.0  # authors: 1e-7 added to target probabilities
    ffl_align_channels: bool = False  # 1x1 conv on sub-network maps of fewer channels
    ffl_fusion_lr: Optional[float] = None  # fusion module optimizer lr (default: train.optimizer.lr)
    # --- SCD (no public code; follows docs/methods.md, section 2.12)
    scd_beta: float = 100.0
    scd_target: Literal["deepest", "next"] = "deepest"


@dataclass
class ClsTrainConfig:
    epochs: int = 2
    max_iters: Optional[int] = None  # stop after this many iterations
    batch_size: int = 64
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.05, weight_decay=5e-4))
    scheduler: SchedulerConfig = field(
        default_factory=lambda: SchedulerConfig(warmup_iters=0, milestones=[150, 180, 210]))
    clip_grad_norm: Optional[float] = None
    log_interval: int = 20  # iterations
    eval_interval: int = 1  # epochs; 0 = only at the end
    checkpoint_interval: int = 1  # epochs (last.pth)
    # A non-finite loss skips the step (up to max_nonfinite_skips times in a row), or stops (as detection's).
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    max_nonfinite_skips: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch.set_num_threads on the CPU
    tensorboard: bool = False  # also write metrics.jsonl's fields as TensorBoard scalars (extra 'tensorboard')


@dataclass
class ClsEvalConfig:
    batch_size: int = 256
    evaluate_teachers: bool = True


@dataclass
class ClsConfig:
    model: NetConfig = field(default_factory=NetConfig)  # the student
    teachers: list[NetConfig] = field(default_factory=list)
    peers: list[NetConfig] = field(default_factory=list)  # dml/dml_e/ffl; empty: num_peers copies of model
    num_peers: int = 2
    method: MethodConfig = field(default_factory=MethodConfig)
    data: ClsDataConfig = field(default_factory=ClsDataConfig)
    train: ClsTrainConfig = field(default_factory=ClsTrainConfig)
    eval: ClsEvalConfig = field(default_factory=ClsEvalConfig)
    output_dir: str = "outputs/cls/run"


def _positive(value: float, key: str, source: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise DetkdError(f"{source}: '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_cls_config(cfg: ClsConfig, source: str) -> None:
    """Value and consistency checks that types alone cannot express."""
    m, name = cfg.method, cfg.method.name
    t = cfg.train
    for key in ("epochs", "batch_size", "log_interval", "checkpoint_interval"):
        _positive(getattr(t, key), f"train.{key}", source)
    _positive(t.eval_interval, "train.eval_interval", source, allow_zero=True)
    _positive(t.max_nonfinite_skips, "train.max_nonfinite_skips", source, allow_zero=True)
    _positive(t.optimizer.lr, "train.optimizer.lr", source)
    _positive(t.optimizer.weight_decay, "train.optimizer.weight_decay", source, allow_zero=True)
    if t.max_iters is not None:
        _positive(t.max_iters, "train.max_iters", source)
    if t.threads is not None:
        _positive(t.threads, "train.threads", source)
    _positive(cfg.eval.batch_size, "eval.batch_size", source)
    d = cfg.data
    for key in ("train_subset", "test_subset"):
        if getattr(d, key) is not None:
            _positive(getattr(d, key), f"data.{key}", source)
    if not 0.0 < d.labelled_fraction <= 1.0:
        raise DetkdError(f"{source}: 'data.labelled_fraction' must be in (0, 1], got {d.labelled_fraction}")
    if d.labelled_fraction < 1.0 and name not in ("baseline", "dml", "dml_e"):
        raise DetkdError(f"{source}: 'data.labelled_fraction' < 1 (semi-supervised) is supported by the "
                         f"methods baseline, dml and dml_e, not '{name}'")
    _positive(d.crop_padding, "data.crop_padding", source, allow_zero=True)
    for key in ("temperature", "ffl_temperature"):
        _positive(getattr(m, key), f"method.{key}", source)
    for key in ("ce_weight", "kd_weight", "fitnet_weight", "at_weight", "sp_weight", "camkd_inter_weight",
                "fitnet_mkd_weight", "scd_beta", "ffl_rampup_epochs", "ffl_eps"):
        _positive(getattr(m, key), f"method.{key}", source, allow_zero=True)
    _positive(m.aekd_c_tol, "method.aekd_c_tol", source)
    if not cfg.output_dir:
        raise DetkdError(f"{source}: 'output_dir' must not be empty")

    k = len(cfg.teachers)
    if name in SINGLE_TEACHER and k != 1:
        raise DetkdError(f"{source}: method '{name}' needs exactly 1 entry in 'teachers', got {k}"
                         + (" (use aver/ebkd/aekd/camkd/fitnet_mkd for several)" if k > 1 else ""))
    if name in MULTI_TEACHER and k < 1:
        raise DetkdError(f"{source}: method '{name}' needs at least 1 entry in 'teachers', got 0")
    if name in NO_TEACHER and k:
        raise DetkdError(f"{source}: method '{name}' uses no teachers, but 'teachers' has {k} "
                         f"(set teachers: [] or pick a distillation method)")
    for i, teacher in enumerate(cfg.teachers):
        if not teacher.checkpoint:
            raise DetkdError(f"{source}: 'teachers[{i}].checkpoint' is required (a teacher is loaded, not trained)")
    if name in ONLINE:
        n = len(cfg.peers) or cfg.num_peers
        if n < 2:
            raise DetkdError(f"{source}: method '{name}' needs at least 2 networks ('peers' or 'num_peers'), got {n}")
    elif cfg.peers:
        raise DetkdError(f"{source}: 'peers' is used by dml, dml_e and ffl only, not by '{name}'")


def load_cls_config(path: str | Path, overrides: list[str] | None = None) -> ClsConfig:
    """Load, merge (``_base_``), override and validate a classification config."""
    origins: dict = {}
    tree = load_yaml_tree(path, origins)
    tree = apply_overrides(tree, parse_overrides(overrides or []), origins)
    source = str(Path(path))
    cfg = build_dataclass(ClsConfig, tree, source, origins)
    check_cls_config(cfg, source)
    return cfg


def cls_config_from_dict(tree: dict, source: str = "<dict>") -> ClsConfig:
    cfg = build_dataclass(ClsConfig, tree, source)
    check_cls_config(cfg, source)
    return cfg
