"""The classification experiment's plan (embedded Fashion-MNIST subset): its teachers,
methods, run names and the overrides that point a student at the experiment's teachers."""

from __future__ import annotations

from pathlib import Path

#: The checkout whose configs/cls/fmnist/ the runs name (this package's parent directory).
REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "configs" / "cls" / "fmnist"
TEACHERS = ("a", "b", "c")
METHODS = ("baseline", "kd", "camkd", "dml", "ffl")


def teacher_runs() -> list[str]:
    """The teachers' run folders, in training order."""
    return [f"teacher_{t}" for t in TEACHERS]


def student_run(method: str, seed: int) -> str:
    """The run folder of ``method`` trained with ``train.seed=seed``."""
    return f"{method}_s{seed}"


def all_runs(methods: list[str], seeds: list[int]) -> list[str]:
    """Every run folder of the experiment: the teachers, then seed by seed every method."""
    return teacher_runs() + [student_run(m, s) for s in seeds for m in methods]


def choose_methods(methods: list[str] | None, semi: bool) -> tuple[str, list[str]]:
    """(baseline, methods with the baseline first) for --methods / --semi."""
    base_name = "baseline_semi" if semi else "baseline"
    chosen = methods if methods is not None else (["dml_semi"] if semi else list(METHODS))
    return base_name, [base_name] + [m for m in chosen if m != base_name]


def teacher_override(method: str, out: Path) -> list[str]:
    """Point the config's teachers (teacher_a/b/c of the recipes) at the checkpoints under ``out``."""
    from detkd.cls.config import load_cls_config

    cfg = load_cls_config(CFG / f"{method}.yaml")
    if not cfg.teachers:
        return []
    items = []
    for t in cfg.teachers:
        name = Path(t.checkpoint).parent.name  # teacher_a, ...
        ckpt = out / name / "model_final.pth"
        width = "null" if t.width is None else t.width
        items.append(f"{{arch: {t.arch}, width: {width}, stem: {t.stem}, checkpoint: '{ckpt}'}}")
    return ["teachers=[" + ", ".join(items) + "]"]


def method_opts(recipe: str, opts: list[str]) -> list[str]:
    """The ``--opts`` for the runs of one recipe: an override of a method's own section
    (``method.kd.temperature=2``) goes only to that method's runs, so one command can tune
    one method beside the baseline; every other override goes to every run."""
    from detkd.cls.config import load_cls_config
    from detkd.cls.methods import METHODS as CLS_METHODS

    name = load_cls_config(CFG / f"{recipe}.yaml").method.name
    kept = []
    for opt in opts:
        parts = opt.split("=", 1)[0].split(".")
        if len(parts) >= 2 and parts[0] == "method" and parts[1] in CLS_METHODS and parts[1] != name:
            continue
        kept.append(opt)
    return kept
