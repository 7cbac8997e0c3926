"""The detection seeds experiment's summary: per-group mean ± std, the printed table, and
the distilled-minus-baseline gains against the seed-to-seed spread."""

from __future__ import annotations

from detkd.experiments.plan import PAIRS, TEACHER_OF
from detkd.experiments.stats import format_mean_std, gap_fraction, mean_std, paired_differences, spread

METRICS = ("AP", "AP50")


def summarize(runs: list[dict]) -> list[dict]:
    """Per group (in order of first appearance): n, seeds, the per-seed values and mean ± std
    of :data:`METRICS`, and the training times. ``runs``: dicts with ``name``, ``seed``,
    ``metrics`` and ``train_seconds``."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["name"], []).append(run)
    out = []
    for name, members in groups.items():
        row = {"name": name, "n": len(members), "seeds": [m["seed"] for m in members]}
        for key in METRICS:
            values = [m["metrics"].get(key) for m in members]
            row[key], row[f"{key}_mean"], row[f"{key}_std"] = values, *mean_std(values)
        row["train_seconds"] = [m.get("train_seconds") for m in members]
        out.append(row)
    return out


def format_table(groups: list[dict]) -> str:
    lines = [f"{'group':<18} {'n':>2}  {'AP (mean ± std)':>17}  {'AP50 (mean ± std)':>17}  seeds",
             "-" * 72]
    for g in groups:
        seeds = ",".join("-" if s is None else str(s) for s in g["seeds"])
        lines.append(f"{g['name']:<18} {g['n']:>2}  {format_mean_std(g['AP_mean'], g['AP_std']):>17}  "
                     f"{format_mean_std(g['AP50_mean'], g['AP50_std']):>17}  {seeds}")
    lines.append("std: sample standard deviation over seeds (n - 1); '-' where n = 1")
    return "\n".join(lines)


def distillation_gain(groups: list[dict], baseline: str = "baseline", distilled: str = "distilled") -> dict | None:
    """Distilled minus baseline AP50 (means) against the seed-to-seed spread.

    spread = the largest of the two groups' sample stds and, where both groups share >= 2
    seeds, the sample std of the seed-for-seed differences (distilled seed s starts from the
    same seed as baseline seed s)."""
    by = {g["name"]: g for g in groups}
    base, dist = by.get(baseline), by.get(distilled)
    if not base or not dist or base["AP50_mean"] is None or dist["AP50_mean"] is None:
        return None
    gain = dist["AP50_mean"] - base["AP50_mean"]
    paired = paired_differences(dict(zip(dist["seeds"], dist["AP50"])), dict(zip(base["seeds"], base["AP50"])))
    paired_std = mean_std(paired)[1]  # None for fewer than two pairs
    limit = spread(base["AP50_std"], dist["AP50_std"], paired_std)
    return {"baseline": baseline, "distilled": distilled, "AP50_gain": gain, "paired_AP50_gains": paired,
            "paired_std": paired_std, "spread": limit,
            "exceeds_spread": (gain > limit) if limit is not None else None,
            "note": "spread = max of the two groups' sample stds of AP50 over seeds and of the "
                    "sample std of the seed-for-seed differences"}


def distillation_gains(groups: list[dict]) -> list[dict]:
    """distillation_gain of every (baseline, distilled) pair of PAIRS present in ``groups``, with
    the share of the AP50 gap to the pair's teacher closed (of the means, and seed for seed)
    where that teacher's run is there too."""
    by = {g["name"]: g for g in groups}
    gains = []
    for b, d in PAIRS:
        gain = distillation_gain(groups, b, d)
        if gain is None:
            continue
        teacher = by.get(TEACHER_OF.get(d, "teacher"))
        if teacher is not None and teacher["AP50_mean"] is not None:
            t = teacher["AP50_mean"]
            gain["teacher"] = teacher["name"]
            gain["AP50_gap_closed"] = gap_fraction(t, by[b]["AP50_mean"], by[d]["AP50_mean"])
            base = dict(zip(by[b]["seeds"], by[b]["AP50"]))
            gain["paired_AP50_gap_closed"] = [gap_fraction(t, base[s], v)
                                              for s, v in zip(by[d]["seeds"], by[d]["AP50"]) if s in base]
        gains.append(gain)
    return gains


def format_gain(gain: dict) -> str:
    """The printed verdict of one :func:`distillation_gain`."""
    verdict = {True: "exceeds", False: "does NOT exceed", None: "cannot be compared with"}[gain["exceeds_spread"]]
    limit = "n/a" if gain["spread"] is None else f"{gain['spread']:.3f}"
    closed = gain.get("AP50_gap_closed")
    share = f", {closed:.0%} of the AP50 gap to {gain['teacher']}" if closed is not None else ""
    return (f"{gain['distilled']} - {gain['baseline']} AP50: {gain['AP50_gain']:+.3f}{share}; it {verdict} the "
            f"seed-to-seed spread ({limit})")
