"""The classification experiment's table: top-1 mean ± std over seeds of every network, its
per-seed values, and its seed-for-seed difference to the baseline student with a verdict."""

from __future__ import annotations

from pathlib import Path

from detkd.experiments.cls_plan import TEACHERS
from detkd.experiments.cls_runs import read_results
from detkd.experiments.stats import format_mean_std, mean_std, paired_differences, spread

# What each method's row is labelled with in the table.
LABELS = {"baseline": "baseline", "kd": "KD (teacher a)", "camkd": "CA-MKD (teachers a, b, c)",
          "dml": "DML (2 peers)", "ffl": "FFL (2 sub-networks)", "aver": "AVER (teachers a, b, c)",
          "ebkd": "EBKD (teachers a, b, c)", "aekd": "AEKD (teachers a, b, c)", "fitnet": "FitNet (teacher a)",
          "at": "AT (teacher a)", "sp": "SP (teacher a)", "fitnet_mkd": "FitNet-MKD (teachers a, b, c)",
          "dml_e": "DML_e (3 peers)", "scd": "SCD", "baseline_semi": "baseline (25% labelled)",
          "dml_semi": "DML (2 peers, 25% labelled)"}


def network_label(method: str, key: str) -> str:
    return {"student": "student", "peer0": "peer 0", "peer1": "peer 1", "peer2": "peer 2", "sub0": "sub-network 0",
            "sub1": "sub-network 1", "fused": "fused classifier", "ensemble": "ensemble of the peers"
            if method.startswith("dml") else "ensemble of the sub-networks"}.get(key, key)


def verdict(diff_mean: float, n_pairs: int, limit: float | None) -> str:
    """"yes" only where the mean gain exceeds the seed spread (of both runs and of the paired
    differences) over two or more seeds; "no" for no gain; else "not beyond spread"."""
    if n_pairs > 1 and limit is not None and diff_mean > limit:
        return "yes"
    return "no" if diff_mean <= 0 else "not beyond spread"


def tabulate(out: Path, methods: list[str], seeds: list[int], baseline: str = "baseline") -> tuple[str, dict]:
    """Markdown table (mean ± std over the seeds, per-seed values) and the same as a dict.

    ``baseline``: the method every other one is compared with (its student, same seed).
    std: :func:`detkd.experiments.stats.mean_std` (sample std, n - 1; "-" / null for one seed)."""
    lines = []
    teachers = {}
    for t in TEACHERS:
        d = out / f"teacher_{t}"
        if (d / "results.json").is_file():
            r = read_results(d)
            teachers[t] = r["networks"]["student"]["top1"]
    if teachers:
        lines += ["| teacher | top-1 |", "|---|---|"]
        lines += [f"| {t} | {v:.2f} |" for t, v in teachers.items()]
        lines.append("")
    base = {}
    for s in seeds:
        d = out / f"{baseline}_s{s}"
        if (d / "results.json").is_file():
            base[s] = read_results(d)["networks"]["student"]["top1"]
    bm, bs = mean_std(list(base.values())) if base else (float("nan"), float("nan"))
    lines += ["| method | network | top-1 mean ± std | per seed (" + ", ".join(str(s) for s in seeds)
              + ") | diff. to baseline, mean ± std over seeds | beats baseline? |",
              "|---|---|---|---|---|---|"]
    rows = []
    for method in methods:
        per_net: dict[str, dict[int, float]] = {}
        for s in seeds:
            d = out / f"{method}_s{s}"
            if not (d / "results.json").is_file():
                continue
            for k, v in read_results(d)["networks"].items():
                per_net.setdefault(k, {})[s] = v["top1"]
        for key, vals in per_net.items():
            m, sd = mean_std(list(vals.values()))
            seeds_txt = ", ".join(f"{vals[s]:.2f}" if s in vals else "-" for s in seeds)
            paired = paired_differences(vals, base)
            if method == baseline:
                diff_txt, judged = "", ""
            elif paired:
                dm, ds = mean_std(paired)
                diff_txt = f"{dm:+.2f} ± " + ("-" if ds is None else f"{ds:.2f}")
                judged = verdict(dm, len(paired), spread(sd, bs, ds))
            else:
                diff_txt, judged, dm, ds = "", "", float("nan"), float("nan")
            lines.append(f"| {LABELS.get(method, method)} | {network_label(method, key)} | "
                         f"{format_mean_std(m, sd, 2)} | {seeds_txt} | {diff_txt} | {judged} |")
            rows.append({"method": method, "network": key, "mean": m, "std": sd,
                         "per_seed": {str(s): v for s, v in vals.items()},
                         "diff_mean": None if method == baseline or not paired else dm,
                         "diff_std": None if method == baseline or not paired else ds, "verdict": judged})
    return "\n".join(lines), {"teachers": teachers, "baseline_mean": bm, "baseline_std": bs, "rows": rows}
