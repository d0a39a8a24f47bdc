"""What each lever of the fast numerics buys: the papers' passes timed in ``exact``, in ``fast``,
and in ``fast`` with one lever set back to its exact value, alternating in one process.

The papers' 784-256-256-256-10 tanh network (float64 model, feedback near the weight product as
after pre-training; ``benchmarks/numerics_equivalence.py``'s choice), the first 128 MNIST images
of the reference excerpt, and each pass's published settings (``tests/reference`` cases):

* ``dfc wake`` (noise-free, T = 1000), ``dfc sleep`` (noisy, 48 steps),
* ``strong_dfc wake`` (Strong-DFC single phase, noisy, T = 500, W and Q),
* ``strong_dfc_ss wake`` (two phases, noise-free, T = 500) and ``strong_dfc_ss sleep`` (noisy).

Rows: ``exact``; ``fast``; ``fast, <lever> as exact`` for each lever of
:data:`lightning_dfc.core.numerics.LEVERS` that matters for the pass (``dtype`` float64, ``noise``
gaussian, ``early_stop`` off, ``outer_every`` 1, ``linear_sleep`` off). The median of
``--repeats`` calls each; the columns give the time and its ratio to ``fast`` (what turning that lever off costs). Two
processes of half a batch each (DDP) are measured by ``benchmarks/side_by_side.py
--ours-processes 2`` and ``benchmarks/full_epoch.py --devices 2``, not here.

    python benchmarks/levers.py --repeats 5 --output levers.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from numerics_equivalence import inputs, load_excerpt, module, set_back  # noqa: E402

PASSES = {  # label: (reference case, phase, levers that act on it)
    "DFC wake": ("dfc", "wake", ("dtype", "early_stop", "outer_every")),
    "DFC sleep": ("dfc_sleep", "sleep", ("dtype", "noise", "linear_sleep")),
    "Strong-DFC single phase wake": ("strong_dfc_wake", "wake", ("dtype", "noise", "outer_every")),
    "Strong-DFC two phases wake": ("strong_dfc_ss_wake", "wake", ("dtype", "early_stop")),
    "Strong-DFC two phases sleep": ("strong_dfc_ss_sleep", "sleep", ("dtype", "noise")),
}


def call_of(model, phase: str, x, y):
    def call():
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            if phase == "wake":
                return model.dfc_wake_update(x, y, generator)
            return model.dfc_sleep_update(x, y, False, generator)
    return call


def alternating(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of each, after one warm-up each, alternating the order every
    round (forward, then backward) so that a drift of the machine's speed hits all of them."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for r in range(repeats):
        for name in (list(calls) if r % 2 == 0 else reversed(list(calls))):
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def measure(label: str, repeats: int, x, y) -> list[dict]:
    case, phase, levers = PASSES[label]
    variants = {"exact": module(case, "exact"), "fast": module(case, "fast")}
    for lever in levers:
        variants[f"fast, {lever} as exact"] = set_back(module(case, "fast"), [lever])
    times = alternating({name: call_of(model, phase, x, y) for name, model in variants.items()}, repeats)
    fast = statistics.median(times["fast"])
    return [{"pass": label, "variant": name, "seconds": statistics.median(t), "to_fast": statistics.median(t) / fast,
             "samples": t} for name, t in times.items()]


def table(rows: list[dict], threads: int) -> str:
    lines = [f"Per call (B = 128, float64 model, {threads} thread(s)), median of the samples, alternating:", "",
             "| pass | numerics | time (s) | / fast |", "|---|---|---|---|"]
    lines += [f"| {r['pass']} | {r['variant']} | {r['seconds']:.4f} | {r['to_fast']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES), metavar="PASS")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    excerpt = load_excerpt()
    x, y = inputs(excerpt["images"][:128], pool=1), excerpt["labels"][:128]
    rows = []
    for label in args.passes:
        rows += measure(label, args.repeats, x, y)
        print(table(rows[-len(PASSES[label][2]) - 2:], args.threads), flush=True)
    text = table(rows, args.threads)
    print(text)
    if args.output:
        args.output.write_text(text)
    return text


if __name__ == "__main__":
    main()
