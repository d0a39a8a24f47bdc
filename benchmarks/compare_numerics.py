"""Whole training runs in the fast numerics against the exact ones: do they learn the same?

Reads two results files of ``benchmarks/learning_curves.py`` (the same rows and settings, one run
in ``numerics: exact``, one in ``fast``) and compares, per row, over the seeds each file holds:

* the test error at the best-validation checkpoint and the validation accuracy after the last
  wake epoch: mean and standard deviation per numerics, their difference, and **Welch's t-test**
  (two-sided, unequal variances) of the difference; the numerics "agree within seed noise" where
  p >= 0.05. With three seeds a side the test only detects differences of a few seed standard
  deviations, so the table gives the differences themselves too;
* the validation curves, mean over seeds with a min-max band, both numerics in one panel per row
  (``--figure``).

    python benchmarks/compare_numerics.py --exact docs/learning_curves.jsonl \\
        --fast docs/learning_curves_fast.jsonl --output docs/compare_numerics.md \\
        --figure docs/figures/compare_numerics.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_curves import ROWS, latest_runs  # noqa: E402

DEFAULT_ROWS = ["dfc", "dfc_fixed", "strong_dfc", "strong_dfc_ss", "dfc_noise"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(t, degrees of freedom, two-sided p) of Welch's test of mean(a) = mean(b)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0, float("inf"), 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    t = (statistics.fmean(a) - statistics.fmean(b)) / se
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return t, df, p


def _ok(records: list[dict[str, Any]], rows: list[str]) -> dict[str, list[dict[str, Any]]]:
    seeds = sorted({r["seed"] for r in records if "seed" in r})
    return {row: [r for r in recs if r["status"] == "ok"] for row, recs in latest_runs(records, rows, seeds).items()}


def _stats(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(exact: dict, fast: dict, rows: list[str]) -> str:
    lines = ["| row | exact: seeds | fast: seeds | test error exact (%) | test error fast (%) | difference | "
             "Welch p | final val. acc. exact (%) | fast (%) | Welch p | wall time per run, exact / fast (as run) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        e, f = exact.get(row, []), fast.get(row, [])
        if len(e) < 2 or len(f) < 2:
            lines.append(f"| {ROWS[row].label} | {len(e)} | {len(f)} | (fewer than 2 seeds) | | | | | | | |")
            continue
        te, tf = [r["test_error"] for r in e], [r["test_error"] for r in f]
        ve, vf = [100 * r["curve_val_acc"][-1] for r in e], [100 * r["curve_val_acc"][-1] for r in f]
        _, _, p_test = welch(tf, te)
        _, _, p_val = welch(vf, ve)
        fit_e = statistics.fmean(r["seconds"]["fit"] for r in e)
        fit_f = statistics.fmean(r["seconds"]["fit"] for r in f)
        lines.append(
            f"| {ROWS[row].label} | {', '.join(str(r['seed']) for r in e)} | {', '.join(str(r['seed']) for r in f)} | "
            f"{_stats(te)} | {_stats(tf)} | {statistics.fmean(tf) - statistics.fmean(te):+.2f} | {p_test:.2f} | "
            f"{_stats(ve)} | {_stats(vf)} | {p_val:.2f} | {fit_e / 60:.1f} / {fit_f / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def figure(exact: dict, fast: dict, rows: list[str], path: Path) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.6 * lines + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    for ax, row in zip(axes, rows):
        for name, runs, color in (("exact", exact.get(row, []), "tab:blue"), ("fast", fast.get(row, []), "tab:orange")):
            curves = [r["curve_val_acc"] for r in runs]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            data = 100 * np.asarray([c[:n] for c in curves], dtype=float)
            x = np.arange(n)
            ax.plot(x, data.mean(0), color=color, marker="o", markersize=2.5, label=f"{name} ({len(curves)} seeds)")
            ax.fill_between(x, data.min(0), data.max(0), color=color, alpha=0.2)
        ax.set_title(ROWS[row].label, fontsize="medium")
        ax.set_xlabel("wake epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("fast against exact numerics: MNIST subset (5,000 train / 1,000 val.), mean over seeds, "
                 "band: min-max", fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exact", type=Path, required=True, help="learning_curves.py results in exact numerics")
    parser.add_argument("--fast", type=Path, required=True, help="the same rows in fast numerics")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=sorted(ROWS))
    parser.add_argument("--output", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args(argv)
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]  # noqa: E731
    exact, fast = _ok(read(args.exact), args.rows), _ok(read(args.fast), args.rows)
    text = table(exact, fast, args.rows)
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.figure:
        figure(exact, fast, args.rows, args.figure)
    return text


if __name__ == "__main__":
    main()
