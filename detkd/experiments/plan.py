"""The detection seeds experiment's plan: its groups, their configs, seeds and overrides.

A *run* is a dict ``{"name", "config", "kind", "seed", "output_dir"}``; :func:`plan_runs`
lists them in training order and :func:`run_overrides` gives each its ``--opts``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The detector-family groups (configs/experiment/families/): each one-stage student alone and distilled from
# the Faster R-CNN teacher with the feature method that did best on it, and the CrossKD pair.
FAMILY_GROUPS = (
    ("retinanet", "configs/experiment/families/retinanet.yaml", "main"),
    ("retinanet_cwd", "configs/experiment/families/retinanet_cwd.yaml", "main"),
    ("fcos", "configs/experiment/families/fcos.yaml", "main"),
    ("fcos_cwd", "configs/experiment/families/fcos_cwd.yaml", "main"),
    ("ssdlite", "configs/experiment/families/ssdlite.yaml", "main"),
    ("ssdlite_cwd", "configs/experiment/families/ssdlite_cwd.yaml", "main"),
    ("fcos_teacher", "configs/experiment/families/fcos_teacher.yaml", "teacher"),
    ("fcos_crosskd", "configs/experiment/families/fcos_crosskd.yaml", "main"),
    # Prediction-level distillation across families: a 128 px FCOS from the Faster R-CNN teacher's
    # detections, online and from the file detkd predict wrote.
    ("fcos128", "configs/experiment/families/fcos128.yaml", "main"),
    ("fcos128_predictions", "configs/experiment/families/fcos128_predictions.yaml", "main"),
    ("fcos128_predictions_offline", "configs/experiment/families/fcos128_predictions_offline.yaml", "main"),
    # ... with the labels of 100 of the 600 training images: alone, distilled on those, and distilled
    # on those plus the other 500 as unlabeled images.
    ("fcos128_l100", "configs/experiment/families/fcos128_l100.yaml", "main"),
    ("fcos128_l100_predictions", "configs/experiment/families/fcos128_l100_predictions.yaml", "main"),
    ("fcos128_l100_unlabeled", "configs/experiment/families/fcos128_l100_unlabeled.yaml", "main"),
)
FAMILY_PAIRS = (("retinanet", "retinanet_cwd"), ("fcos", "fcos_cwd"), ("ssdlite", "ssdlite_cwd"),
                ("fcos", "fcos_crosskd"), ("fcos128", "fcos128_predictions"), ("fcos128", "fcos128_predictions_offline"),
                ("fcos128_l100", "fcos128_l100_predictions"), ("fcos128_l100", "fcos128_l100_unlabeled"))
# The teacher run a distillation group reads, where it is not "teacher" (the Faster R-CNN one).
TEACHER_OF = {"fcos_crosskd": "fcos_teacher"}
# Groups whose teacher is its detections file (teacher.detections), written by detkd predict from
# the teacher run into TEACHER_DIR/detections/ before their first run.
OFFLINE = ("fcos128_predictions_offline", "fcos128_l100_predictions", "fcos128_l100_unlabeled")

# (group, config, kind): kind "teacher" (one run, in OUTPUT_ROOT/<group>), "main" (--seeds) or
# "ablation" (--ablation-seeds).
GROUPS = (
    ("teacher", "configs/experiment/teacher.yaml", "teacher"),
    ("baseline", "configs/experiment/student.yaml", "main"),
    ("distilled", "configs/experiment/distill.yaml", "main"),
    ("baseline_fpn256", "configs/experiment/student_fpn256.yaml", "main"),
    ("distilled_fpn256", "configs/experiment/distill_fpn256.yaml", "main"),
    ("baseline_fpn128", "configs/experiment/student_fpn128.yaml", "main"),
    ("distilled_fpn128", "configs/experiment/distill_fpn128.yaml", "main"),
    ("hint_only", "configs/experiment/ablations/hint_only.yaml", "ablation"),
    ("soft_only", "configs/experiment/ablations/soft_only.yaml", "ablation"),
    ("bound_only", "configs/experiment/ablations/bound_only.yaml", "ablation"),
    ("no_adaptation_ref", "configs/experiment/ablations/no_adaptation_ref.yaml", "ablation"),
    ("no_adaptation", "configs/experiment/ablations/no_adaptation.yaml", "ablation"),
    # The FPN-feature methods on the 128-ch student (only with --only).
    ("pkd_fpn128", "configs/experiment/methods/pkd_fpn128.yaml", "main"),
    ("cwd_fpn128", "configs/experiment/methods/cwd_fpn128.yaml", "main"),
    ("mgd_fpn128", "configs/experiment/methods/mgd_fpn128.yaml", "main"),
    ("fgd_fpn128", "configs/experiment/methods/fgd_fpn128.yaml", "main"),
    ("fgfi_fpn128", "configs/experiment/methods/fgfi_fpn128.yaml", "main"),
    ("chen_pkd_fpn128", "configs/experiment/methods/chen_pkd_fpn128.yaml", "main"),
    # Students of the one-stage families from the same Faster R-CNN teacher, and a
    # same-family one-stage pair with CrossKD (only with --only).
    *FAMILY_GROUPS,
)
GROUP_NAMES = tuple(g[0] for g in GROUPS)
# What runs without --only (about 100 minutes on one CPU thread: teacher 17, the 32-ch pair
# 20, the 128-ch pair 39, its three term ablations 25): everything but the 256-channel
# groups (about 50 more minutes for the pair over 3 seeds, 20 for the adapter ablation pair;
# --only adds them).
METHOD_GROUPS = ("pkd_fpn128", "cwd_fpn128", "mgd_fpn128", "fgd_fpn128", "fgfi_fpn128", "chen_pkd_fpn128")
OPTIONAL_GROUPS = ("baseline_fpn256", "distilled_fpn256", "no_adaptation_ref", "no_adaptation", *METHOD_GROUPS,
                   *(g[0] for g in FAMILY_GROUPS))
DEFAULT_GROUPS = tuple(g for g in GROUP_NAMES if g not in OPTIONAL_GROUPS)
# (baseline, distilled) groups that differ only in the distillation terms.
PAIRS = (("baseline", "distilled"), ("baseline_fpn256", "distilled_fpn256"), ("baseline_fpn128", "distilled_fpn128"),
         *(("baseline_fpn128", group) for group in METHOD_GROUPS), *FAMILY_PAIRS)
# Students trained alone (the baselines): no teacher to point at OUTPUT_ROOT/teacher.
ALONE = tuple(baseline for baseline, _ in PAIRS)


def plan_runs(args: argparse.Namespace) -> list[dict]:
    """Every run to do, in training order: the teacher, then for each seed one run of every
    "main" group (baseline, distilled, ... in GROUPS order), then the ablations.

    ``args``: ``output_root``, ``only``, ``seeds`` and ``ablation_seeds`` (the command's options)."""
    root = Path(args.output_root)
    by_name = {name: (cfg, kind) for name, cfg, kind in GROUPS}
    runs = []

    def add(name: str, seed: int | None) -> None:
        cfg, kind = by_name[name]
        out = root / name if kind == "teacher" else root / name / f"seed{seed}"
        runs.append({"name": name, "config": cfg, "kind": kind, "seed": seed, "output_dir": out})

    for name, _, kind in GROUPS:
        if kind == "teacher" and name in args.only:
            add(name, None)
    for seed in args.seeds:
        for name, _, kind in GROUPS:
            if kind == "main" and name in args.only:
                add(name, seed)
    for name, _, kind in GROUPS:
        if kind == "ablation" and name in args.only:
            for seed in args.ablation_seeds:
                add(name, seed)
    return runs


def distills(run: dict) -> bool:
    """Whether the run learns from the teacher (reads OUTPUT_ROOT/teacher)."""
    return run["kind"] != "teacher" and run["name"] not in ALONE


def teacher_dir(args: argparse.Namespace, run: dict) -> Path:
    """Where a distillation run reads its teacher: OUTPUT_ROOT/teacher, or the teacher group
    :data:`TEACHER_OF` names for it."""
    return Path(args.output_root) / TEACHER_OF.get(run["name"], "teacher")


def run_overrides(run: dict, args: argparse.Namespace) -> list[str]:
    """The run's config overrides: ``--opts``, the epochs, its seed, the teacher's own run
    (distillation runs) and its output directory.

    ``args``: ``opts``, ``epochs``, ``teacher_epochs`` and ``output_root``."""
    opts = list(args.opts)
    epochs = args.teacher_epochs if run["kind"] == "teacher" and args.teacher_epochs else args.epochs
    if epochs is not None:
        opts.append(f"train.epochs={epochs}")
    if run["seed"] is not None:
        opts.append(f"train.seed={run['seed']}")
    if distills(run) and run["name"] in OFFLINE:
        opts.append(f"teacher.detections={offline_detections(args, run)}")
    elif distills(run):
        teacher = teacher_dir(args, run).resolve()
        opts += [f"teacher.config={teacher / 'config.yaml'}",
                 f"teacher.checkpoint={teacher / 'model_final.pth'}"]
    opts.append(f"output_dir={run['output_dir']}")
    return opts


def offline_detections(args: argparse.Namespace, run: dict) -> Path:
    """The detections file of an :data:`OFFLINE` group: its teacher run's ``detkd predict`` output."""
    return (teacher_dir(args, run) / "detections" / "detections_coco.json").resolve()
