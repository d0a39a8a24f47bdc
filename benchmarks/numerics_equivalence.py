"""The fast numerics against the exact ones on the papers' network, update by update.

The papers' 784-256-256-256-10 tanh network (seed 0, float64, feedback near the weight product as
after pre-training: ``tests/reference/make_reference.py``'s choice) and the first 128 MNIST images
of the reference excerpt, with each reference case's published settings (``tests/reference``):

* **noise-free passes** (DFC, DFC-SS, DFC-SSA wake, trained and fixed feedback; Strong-DFC's
  two-phase wake): worst 1 - cos and relative norm difference over the update's tensors;
* **noisy passes** (DFC's sleep, Strong-DFC's pre-training, two-phase sleep, single-phase wake and
  its feedback update, DFC with noise): over ``--seeds`` noise seeds, per tensor the difference of
  the mean updates in units of its standard error (norm over the tensor; about 1 when the means
  are equal) and the ratio of the spreads (norms of the per-element standard deviations, and the
  median of their ratios).

``--set-back LEVER ...`` compares, on the noisy passes, ``fast`` with these levers at their exact
values (for example ``noise``: Gaussian draws) against ``exact``: which lever a difference comes
from. (Speed is measured elsewhere: ``benchmarks/side_by_side.py``, ``benchmarks/levers.py``.) One JSON line per row goes to
``--results`` as soon as the row is done (``--resume`` skips rows already there).

    python benchmarks/numerics_equivalence.py --seeds 50 --results docs/numerics_equivalence.jsonl \\
        --output docs/numerics_equivalence.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

from harness import agreement, load, load_excerpt, settings_of  # noqa: E402
from make_reference import inputs, near_weight_product  # noqa: E402

from lightning_dfc import MLP, DFCModule  # noqa: E402

PAPER = [784, 256, 256, 256, 10]
WAKE_NOISE = {"sigma": 4.278964325349612e-3, "sigma_output": 2.9713880264874388e-2, "tau_noise": 0.07}
NOISE_FREE = [("dfc", "DFC"), ("dfc_fixed", "DFC (fixed)"), ("dfc_ss", "DFC-SS"), ("dfc_ss_fixed", "DFC-SS (fixed)"),
              ("dfc_ssa", "DFC-SSA"), ("strong_dfc_ss_wake", "Strong-DFC two phases")]
NOISY = [("dfc_sleep", "sleep", "DFC sleep"), ("strong_dfc_pretrain", "pretrain", "Strong-DFC single-phase pre-training"),
         ("strong_dfc_ss_sleep", "sleep", "Strong-DFC two-phase sleep"),
         ("strong_dfc_wake", "wake", "Strong-DFC single phase (W and Q)"), ("dfc", "noisy wake", "DFC with noise")]


def module(case: str, numerics: str, noisy_wake: bool = False, package=None) -> DFCModule:
    """The papers' network with ``case``'s published settings in ``numerics``; ``package``: the
    ``lightning_dfc`` to build it with (default: this one; ``ab_revision.py`` passes an older one)."""
    record = load(case)
    settings = settings_of(record)
    settings["numerics"] = numerics
    if noisy_wake:
        settings["dynamics"] = {**settings["dynamics"], **WAKE_NOISE}
        settings["updates"] = {**settings["updates"], "exclude_non_converged": False}
    torch.manual_seed(0)
    module_class, mlp = (DFCModule, MLP) if package is None else (package.DFCModule, package.MLP)
    model = module_class(mlp(PAPER, activation="tanh"), **settings).double()
    if model.dfc_method.feedback_init != "weight_product":
        with torch.no_grad():
            weights = [w.float() for w in model.dfc_net.params().weights]
            for q, value in zip(model.dfc_net.feedback, near_weight_product(torch, weights)):
                q.copy_(value)
    return model


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def noise_free_row(case: str, label: str, x, y) -> dict:
    results = {}
    for numerics in ("exact", "fast"):
        model = module(case, numerics)
        model.dfc_wake_update(x, y)  # warm-up
        update, seconds = timed(lambda: model.dfc_wake_update(x, y))
        results[numerics] = (update, seconds)
    (exact, t_exact), (fast, t_fast) = results["exact"], results["fast"]
    pairs = [agreement(a.double(), b.double()) for a, b in zip(fast.tensors(), exact.tensors())]
    return {"row": label, "case": case, "kind": "noise-free", "one_minus_cos": max(p[0] for p in pairs),
            "norm_error": max(p[1] for p in pairs), "steps_exact": exact.stats["steps"], "steps_fast": fast.stats["steps"],
            "seconds_exact": t_exact, "seconds_fast": t_fast}


def set_back(model: DFCModule, levers: list[str]) -> DFCModule:
    """``model`` with these levers at the exact preset's values in every simulation."""
    import dataclasses

    from lightning_dfc.core.numerics import EXACT

    values = {lever: getattr(EXACT, lever) for lever in levers}
    if values:
        model.dfc_dynamics = dataclasses.replace(model.dfc_dynamics, **values)
        fb = model.dfc_feedback_config
        model.dfc_feedback_config = dataclasses.replace(fb, simulation=dataclasses.replace(fb.simulation, **values))
    return model


def noisy_row(case: str, kind: str, label: str, x, y, seeds: int, levers: list[str] | None = None) -> dict:
    samples, seconds = {}, {}
    for numerics in ("exact", "fast"):
        model = module(case, numerics, noisy_wake=kind == "noisy wake")
        if numerics == "fast":
            set_back(model, levers or [])

        def one(seed):
            generator = torch.Generator().manual_seed(seed)
            if kind in ("sleep", "pretrain"):
                return [g.double() for g in model.dfc_sleep_update(x, y, kind == "pretrain", generator)[0]]
            update = model.dfc_wake_update(x, y, generator)
            return [t.double() for t in update.tensors() + (update.feedback or [])]

        one(10_000)  # warm-up
        times, out = [], []
        for seed in range(seeds):
            value, t = timed(lambda s=seed: one(s))
            out.append(value)
            times.append(t)
        samples[numerics], seconds[numerics] = out, statistics.median(times)
    mean_errors, spreads, medians, relative, relative_se = [], [], [], [], []
    for i in range(len(samples["exact"][0])):
        e = torch.stack([u[i] for u in samples["exact"]])
        f = torch.stack([u[i] for u in samples["fast"]])
        standard_error = torch.sqrt((f.var(0) + e.var(0)) / seeds)
        if float(standard_error.norm()) == 0:
            continue
        mean_errors.append(float((f.mean(0) - e.mean(0)).norm() / standard_error.norm()))
        relative.append(float((f.mean(0) - e.mean(0)).norm() / e.mean(0).norm().clamp_min(1e-300)))
        relative_se.append(float(standard_error.norm() / e.mean(0).norm().clamp_min(1e-300)))
        spreads.append(float(f.std(0).norm() / e.std(0).norm()))
        used = e.std(0) > 1e-6 * float(e.std(0).max())
        medians.append(float((f.std(0)[used] / e.std(0)[used]).median()))
    return {"row": label + ("" if not levers else f" (fast, {', '.join(levers)} as exact)"), "case": case, "kind": kind,
            "seeds": seeds, "mean_error_se": max(mean_errors), "mean_error_se_per_tensor": mean_errors,
            "relative_mean_difference": relative, "relative_standard_error": relative_se,
            "spread_ratio": [min(spreads), max(spreads)], "median_spread_ratio": [min(medians), max(medians)],
            "seconds_exact": seconds["exact"], "seconds_fast": seconds["fast"]}


def table(rows: list[dict]) -> str:
    lines = ["Noise-free passes (one update, fast against exact):", "",
             "| pass | worst 1 - cos | worst norm difference | Euler steps exact / fast |",
             "|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "noise-free":
            lines.append(f"| {r['row']} | {r['one_minus_cos']:.1e} | {r['norm_error']:.1e} | {r['steps_exact']:.0f} / "
                         f"{r['steps_fast']:.0f} |")
    lines += ["", "Noisy passes (over the seeds: the mean update's difference in standard errors, worst tensor; "
              "spread ratio fast / exact, range over tensors):", "",
              "| pass | seeds | mean difference (SE) | spread ratio (norm) | spread ratio (median) |",
              "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "noise-free":
            lo, hi = r["spread_ratio"]
            mlo, mhi = r["median_spread_ratio"]
            lines.append(f"| {r['row']} | {r['seeds']} | {r['mean_error_se']:.2f} | {lo:.3f} - {hi:.3f} | "
                         f"{mlo:.3f} - {mhi:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="row labels' cases to run (default: all)")
    parser.add_argument("--results", type=Path, default=Path("numerics_equivalence.jsonl"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--set-back", nargs="+", default=[], metavar="LEVER",
                        help="noisy rows: the fast side with these levers at their exact values (e.g. noise)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    excerpt = load_excerpt()
    x, y = inputs(excerpt["images"][:128], pool=1), excerpt["labels"][:128]
    done = set()
    if args.resume and args.results.exists():
        done = {json.loads(line)["row"] for line in args.results.read_text().splitlines() if line}
    jobs = [("free", case, None, label) for case, label in NOISE_FREE] + [("noisy", c, k, label) for c, k, label in NOISY]
    with torch.no_grad():
        for kind, case, noisy_kind, label in jobs:
            if args.set_back and kind == "free":
                continue  # the levers set back are compared on the noisy passes
            row_label = label + ("" if not args.set_back else f" (fast, {', '.join(args.set_back)} as exact)")
            if row_label in done or (args.only and case not in args.only):
                continue
            row = noise_free_row(case, label, x, y) if kind == "free" else noisy_row(case, noisy_kind, label, x, y,
                                                                                     args.seeds, args.set_back)
            print(json.dumps(row), flush=True)
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    text = table(rows)
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
