"""Typed configuration of classification runs (``tools/train_cls.py``).

The same YAML system as detection (``_base_`` inheritance, ``--opts`` overrides, unknown
keys and wrong types rejected with the key and the file): :func:`load_cls_config` reads
the tree with :func:`detkd.config.tree.load_tree` and builds it with
:func:`detkd.config.build.build_dataclass`, only the schema differs; each field's range is
declared on it (:func:`detkd.config.fields.option`). The optimizer and schedule sections are
detection's :class:`~detkd.config.schema.OptimizerConfig` and
:class:`~detkd.config.schema.SchedulerConfig` with classification defaults.

Each method has its own typed section, as the detection methods do (``method: {name: kd,
kd: {temperature: 3}}``); only the named method's section may be set, and it holds that
method's defaults where not given: detkd's method specification (``docs/methods.md``, section 2)
and the papers: KD T = 4; FitNet 100; AT 1000; SP 3000; CA-MKD 1 x L_KD + 50 x L_inter with
L_inter skipped in epoch 0; DML T = 1; FFL T = 3 with an 80-epoch ramp-up. The flat keys of
before (``method.kd_weight`` ...) are refused with the key they moved to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from detkd.config.build import build_dataclass
from detkd.config.fields import option
from detkd.config.tree import key_source, load_tree
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
    train_subset: Optional[int] = option(None, gt=0)  # use N training images (a seeded random choice)
    test_subset: Optional[int] = option(None, gt=0)  # use N test images
    test_split: Literal["t10k", "subset"] = "t10k"  # fmnist without root: see the docstring
    subset_seed: int = 0
    # Semi-supervised (baseline, dml, dml_e): the labels of a seeded random (1 - fraction)
    # of the training set are hidden; those samples enter only the KL terms.
    labelled_fraction: float = option(1.0, gt=0, le=1)
    augment: bool = True  # random crop with `crop_padding` zero padding + horizontal flip
    crop_padding: int = option(4, ge=0)
    hflip: bool = True
    pad_to_32: bool = True  # fmnist: zero-pad 28x28 to 32x32
    gray_to_rgb: bool = False  # fmnist: repeat the gray channel 3 times (in_channels 3)


# ----------------------------------------------------------------------------- method sections
# One typed section per method, named after it (``method: {name: kd, kd: {temperature: 3}}``);
# only the named method's section may be set, and it is filled with its defaults when absent.
# Defaults: detkd's method specification (``docs/methods.md``, section 2) and the papers.


@dataclass
class KDOptions:
    """Logit KD, ``kd`` (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
    ``weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` (batchmean), T = 4 (docs/methods.md,
    section 2). ``aver`` (the mean over the teachers of that loss) and ``ebkd`` (entropy-weighted
    teachers, Kwon et al. 2020) take the same options."""

    temperature: float = option(4.0, gt=0)
    weight: float = option(1.0, ge=0)


@dataclass
class AEKDOptions:
    """AEKD (Du et al., NeurIPS 2020, "Agree to Disagree", logit version): ``weight * sum_k w_k
    L_KD,k`` with the teacher weights w from a one-class SVM in gradient space, nu = 1 / (c_tol K)
    (docs/methods.md, section 2)."""

    temperature: float = option(4.0, gt=0)
    weight: float = option(1.0, ge=0)
    c_tol: float = option(0.6, gt=0)


@dataclass
class CAMKDOptions:
    """CA-MKD (Zhang et al., ICASSP 2022, "Confidence-Aware Multi-Teacher Knowledge
    Distillation"): ``weight * L_KD + inter_weight * L_inter``, both weighted by the teachers'
    confidence; 1 x L_KD + 50 x L_inter with L_inter skipped in epoch 0 (docs/methods.md, section 2)."""

    temperature: float = option(4.0, gt=0)
    weight: float = option(1.0, ge=0)
    inter_weight: float = option(50.0, ge=0)
    inter_start_epoch: int = 1  # L_inter off before this epoch (spec: skip epoch 0)
    detach_inter_weights: bool = False  # authors' code: the intermediate weights are not detached


@dataclass
class FitNetOptions:
    """FitNet (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): ``weight * MSE(r(F_s),
    F_t)`` with the regressor r trained jointly; weight 100 (docs/methods.md, section 2). Stage indices
    count from 0 (shallow) and may be negative (-1 = last)."""

    weight: float = option(100.0, ge=0)
    stage: int = -1  # student stage of the hint
    teacher_stage: Optional[int] = None  # default: the same as stage


@dataclass
class ATOptions:
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"):
    ``weight * sum over the stage pairs of MSE(a_s, a_t)``, a = l2normalize(mean_c F^2); weight
    1000 (docs/methods.md, section 2)."""

    weight: float = option(1000.0, ge=0)
    stages: Optional[list[int]] = None  # student stages; null = all, paired with the teacher's from the deepest


@dataclass
class SPOptions:
    """Similarity-preserving KD (Tung & Mori 2019): ``weight * ||G_t - G_s||_F^2 / B^2`` with
    G = row-l2-normalize(Q Q^T) of the stage maps; weight 3000 (docs/methods.md, section 2)."""

    weight: float = option(3000.0, ge=0)
    stage: int = -1  # the same stage index in student and teacher


@dataclass
class FitNetMKDOptions:
    """FitNet-MKD (Romero et al. 2015 hints, one regressor per teacher): ``weight * mean over the
    teachers of MSE(r_k(F_s), F_tk)`` on the last stage maps; the spec does not fix the weight, 50
    reuses CA-MKD's (docs/methods.md, section 2)."""

    weight: float = option(50.0, ge=0)


@dataclass
class DMLOptions:
    """Deep mutual learning (Zhang et al., CVPR 2018), ``dml`` and ``dml_e``: per peer CE + the
    mean KL to each other peer (``dml``) / the KL to the mean of the others (``dml_e``), T = 1
    (docs/methods.md, section 2). ``sequential`` is the paper's Algorithm 1 (peer k updated against the
    others' current predictions), ``simultaneous`` updates all peers from one forward pass."""

    update: Literal["sequential", "simultaneous"] = "sequential"


@dataclass
class FFLOptions:
    """Feature fusion learning (Kim et al. 2019, "Feature Fusion for Online Mutual Knowledge
    Distillation"): ``sum_i CE(z_i) + CE(z_f) + w(e) (sum_i KL_T(z_i, z_f) + KL_T(z_f, z_e))``,
    T = 3, w(e) = exp(-5 (1 - min(e, R)/R)^2) with R = 80 epochs (docs/methods.md, section 2)."""

    temperature: float = option(3.0, gt=0)
    rampup_epochs: float = option(80.0, ge=0)
    eps: float = option(0.0, ge=0)  # authors' code: 1e-7 added to the target probabilities
    align_channels: bool = False  # 1x1 conv on sub-network maps of fewer channels
    fusion_lr: Optional[float] = None  # the fusion module's optimizer lr (default: train.optimizer.lr)


@dataclass
class SCDOptions:
    """SCD, similarity-consistency self-distillation (no public code; follows detkd's specification,
    methods.md section 2, SCD): ``beta * sum_{l < L} ||S_l - sg(S_target)||_F^2 / B^2``; beta 100
    is not fixed by the spec. ``target``: ``deepest`` (each shallow stage mimics the last) or
    ``next`` (each stage mimics the next one)."""

    beta: float = option(100.0, ge=0)
    target: Literal["deepest", "next"] = "deepest"


# method name -> its section's class (baseline has none)
METHOD_OPTIONS: dict[str, type] = {
    "kd": KDOptions, "aver": KDOptions, "ebkd": KDOptions, "aekd": AEKDOptions, "camkd": CAMKDOptions,
    "fitnet": FitNetOptions, "at": ATOptions, "sp": SPOptions, "fitnet_mkd": FitNetMKDOptions,
    "dml": DMLOptions, "dml_e": DMLOptions, "ffl": FFLOptions, "scd": SCDOptions,
}


@dataclass
class MethodConfig:
    """``name`` and ``ce_weight`` (the cross-entropy on the labels, student methods), then one
    section per method (see the classes above). After loading, the named method's section holds
    its options (its defaults where not given): read it as ``cfg.method.options`` (None for
    ``baseline``) or ``cfg.method.<name>``."""

    name: MethodName = "baseline"
    ce_weight: float = option(1.0, ge=0)
    kd: Optional[KDOptions] = None
    aver: Optional[KDOptions] = None
    ebkd: Optional[KDOptions] = None
    aekd: Optional[AEKDOptions] = None
    camkd: Optional[CAMKDOptions] = None
    fitnet: Optional[FitNetOptions] = None
    at: Optional[ATOptions] = None
    sp: Optional[SPOptions] = None
    fitnet_mkd: Optional[FitNetMKDOptions] = None
    dml: Optional[DMLOptions] = None
    dml_e: Optional[DMLOptions] = None
    ffl: Optional[FFLOptions] = None
    scd: Optional[SCDOptions] = None

    def __post_init__(self) -> None:
        if self.name in METHOD_OPTIONS and getattr(self, self.name) is None:
            setattr(self, self.name, METHOD_OPTIONS[self.name]())

    @property
    def options(self) -> Any:
        """The named method's section (None for ``baseline``)."""
        return getattr(self, self.name) if self.name in METHOD_OPTIONS else None


# The flat keys before one section per method: old key -> (methods that read it, new field).
_LOGIT_KD = ("kd", "aver", "ebkd", "aekd", "camkd")
MOVED_METHOD_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "temperature": (_LOGIT_KD, "temperature"),
    "kd_weight": (_LOGIT_KD, "weight"),
    "fitnet_weight": (("fitnet",), "weight"),
    "fitnet_stage": (("fitnet",), "stage"),
    "fitnet_teacher_stage": (("fitnet",), "teacher_stage"),
    "at_weight": (("at",), "weight"),
    "at_stages": (("at",), "stages"),
    "sp_weight": (("sp",), "weight"),
    "sp_stage": (("sp",), "stage"),
    "aekd_c_tol": (("aekd",), "c_tol"),
    "camkd_inter_weight": (("camkd",), "inter_weight"),
    "camkd_inter_start_epoch": (("camkd",), "inter_start_epoch"),
    "camkd_detach_inter_weights": (("camkd",), "detach_inter_weights"),
    "fitnet_mkd_weight": (("fitnet_mkd",), "weight"),
    "dml_update": (("dml", "dml_e"), "update"),
    "ffl_temperature": (("ffl",), "temperature"),
    "ffl_rampup_epochs": (("ffl",), "rampup_epochs"),
    "ffl_eps": (("ffl",), "eps"),
    "ffl_align_channels": (("ffl",), "align_channels"),
    "ffl_fusion_lr": (("ffl",), "fusion_lr"),
    "scd_beta": (("scd",), "beta"),
    "scd_target": (("scd",), "target"),
}
SECTIONS_SINCE = "2026-12-02"


def moved_key_message(old: str, name: Any) -> str:
    """Where flat key ``method.<old>`` went, for a run of method ``name``."""
    methods, new = MOVED_METHOD_KEYS[old]
    if name in methods or len(methods) == 1:
        target = f"'method.{name if name in methods else methods[0]}.{new}'"
    else:
        target = f"'method.<name>.{new}' (<name>: {', '.join(methods)})"
    return (f"'method.{old}' moved: use {target} (one section per method since {SECTIONS_SINCE}; "
            f"see docs/classification.md)")


def _check_moved_keys(tree: dict, origins: dict, source: str) -> None:
    """The old flat method keys, before the schema would call them unknown."""
    method = tree.get("method")
    if not isinstance(method, dict):
        return
    for key in method:
        if key in MOVED_METHOD_KEYS:
            where = key_source(f"method.{key}", origins, source)
            raise DetkdError(f"{where}: {moved_key_message(key, method.get('name', 'baseline'))}")


def _check_method_sections(m: MethodConfig, origins: dict, source: str) -> None:
    """Only the named method's section may be set (``null`` is fine)."""
    for key in METHOD_OPTIONS:
        if key != m.name and getattr(m, key) is not None:
            path = f"method.{key}"
            # the file that set the section, or one of its keys (--opts method.fitnet.weight=3)
            inner = [origins[k] for k in origins if k.startswith(path + ".") and origins[k]]
            where = origins.get(path) or (inner[-1] if inner else key_source(path, origins, source))
            own = f"its section is 'method.{m.name}'" if m.name in METHOD_OPTIONS else "it has no section"
            raise DetkdError(f"{where}: 'method.{key}' is set but method.name is '{m.name}' ({own}); "
                             f"remove it (or --opts method.{key}=null), or set method.name: {key}")


@dataclass
class ClsTrainConfig:
    epochs: int = option(2, gt=0)
    max_iters: Optional[int] = option(None, gt=0)  # stop after this many iterations
    batch_size: int = option(64, gt=0)
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.05, weight_decay=5e-4))
    scheduler: SchedulerConfig = field(
        default_factory=lambda: SchedulerConfig(warmup_iters=0, milestones=[150.0, 180.0, 210.0]))
    clip_grad_norm: Optional[float] = None
    log_interval: int = option(20, gt=0)  # iterations
    eval_interval: int = option(1, ge=0)  # epochs; 0 = only at the end
    checkpoint_interval: int = option(1, gt=0)  # epochs (last.pth)
    # A non-finite loss skips the step (up to max_nonfinite_skips times in a row), or stops (as detection's).
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    max_nonfinite_skips: int = option(10, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = option(None, gt=0)  # torch.set_num_threads on the CPU
    tensorboard: bool = False  # also write metrics.jsonl's fields as TensorBoard scalars (extra 'tensorboard')


@dataclass
class ClsEvalConfig:
    batch_size: int = option(256, gt=0)
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


def check_cls_config(cfg: ClsConfig, source: str, origins: dict | None = None) -> None:
    """Checks across fields and sections (each field's own range is declared on it;
    ``origins``: which file set each dotted key, for the messages)."""
    name = cfg.method.name
    if cfg.data.labelled_fraction < 1.0 and name not in ("baseline", "dml", "dml_e"):
        raise DetkdError(f"{source}: 'data.labelled_fraction' < 1 (semi-supervised) is supported by the "
                         f"methods baseline, dml and dml_e, not '{name}'")
    _check_method_sections(cfg.method, origins or {}, source)
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
    tree, origins = load_tree(path, overrides)
    source = str(Path(path))
    _check_moved_keys(tree, origins, source)
    cfg = build_dataclass(ClsConfig, tree, source, origins)
    check_cls_config(cfg, source, origins)
    return cfg


def cls_config_from_dict(tree: dict, source: str = "<dict>") -> ClsConfig:
    _check_moved_keys(tree, {}, source)
    cfg = build_dataclass(ClsConfig, tree, source)
    check_cls_config(cfg, source)
    return cfg
