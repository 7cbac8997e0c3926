"""The schema of classification configs (``tools/train_cls.py``): typed dataclasses with
each field's range on it (:func:`detkd.config.fields.option`), read by the generic loader of
:mod:`detkd.config` (:mod:`detkd.cls.config` passes it the methods' sections). The
optimizer and schedule sections are detection's :class:`~detkd.config.schema.OptimizerConfig`
and :class:`~detkd.config.schema.SchedulerConfig` with classification defaults.

``method`` holds ``name``, ``ce_weight`` and one section per method, named after it
(``method: {name: kd, kd: {temperature: 3}}``), as detection's ``distill`` does: the
sections' dataclasses are in the methods' files (:mod:`detkd.cls.methods`), which this module
does not import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from detkd.config.fields import option, registry
from detkd.config.schema import OptimizerConfig, SchedulerConfig

__all__ = ["Arch", "ClsConfig", "ClsDataConfig", "ClsEvalConfig", "ClsTrainConfig", "MethodConfig", "NetConfig"]

Arch = Literal["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
               "resnet18", "resnet34", "resnet50", "mobilenet_v2"]


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


@dataclass
class MethodConfig:
    """``name`` (an entry of :data:`detkd.cls.methods.METHODS`) and ``ce_weight`` (the
    cross-entropy on the labels, student methods), then the named method's section
    (``method.<name>``, its dataclass in the method's file). After loading, the section
    holds the method's options (its defaults where not given): ``cfg.method.options`` (None
    for a method without options, ``baseline``), the same as ``cfg.method.sections[name]``."""

    name: str = option("baseline", one_of="cls_methods")
    ce_weight: float = option(1.0, ge=0)
    # method name -> its section (registry order); YAML: method.<name>.
    sections: dict[str, Any] = registry("cls_methods")

    @property
    def options(self) -> Any:
        """The named method's section (None for a method without options)."""
        return self.sections.get(self.name)


@dataclass
class ClsTrainConfig:
    epochs: int = option(2, gt=0)
    max_iters: Optional[int] = option(None, gt=0)  # stop after this many iterations
    batch_size: int = option(64, gt=0)
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.05, weight_decay=5e-4))
    scheduler: SchedulerConfig = field(
        default_factory=lambda: SchedulerConfig(warmup_iters=0, milestones=[150.0, 180.0, 210.0]))
    clip_grad_norm: Optional[float] = option(None, gt=0)
    log_interval: int = option(20, gt=0)  # iterations
    eval_interval: int = option(1, ge=0)  # epochs; 0 = only at the end
    checkpoint_interval: int = option(1, gt=0)  # epochs (last.pth)
    checkpoint_period_iters: int = option(0, ge=0)  # also write last.pth every N iterations (0 = off)
    # A non-finite loss skips the step (up to max_nonfinite_skips times in a row), or stops (as detection's).
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    max_nonfinite_skips: int = option(10, ge=0)
    # Loss terms stuck at a constant, at 0 or exploding over a window of steps: warn, stop or off.
    health: Literal["warn", "stop", "off"] = "warn"
    health_window: int = option(50, ge=2)  # iterations
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
