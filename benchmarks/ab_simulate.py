"""What a change of the simulation costs: an old revision's ``simulate`` against the current one,
alternating in one process on the same module and batch (the machine's drift cancels).

    python benchmarks/ab_simulate.py --old 3cf54ec --threads 1 --cases dfc_sleep dfc_sleep_float32 \
        strong_dfc_wake strong_dfc_ss_sleep_float32
    python benchmarks/ab_simulate.py --old f9db3fd --cases dfc_wake strong_dfc_wake --repeats 7

A case that needs what the old ``simulate`` did not have yet (3cf54ec's has no ``classify``,
which today's DFC wake passes to wait for the convergence test) stops with an error naming it.

``--old`` must be a revision from before the core/shell split (its simulation lived in
``lightning_dfc/dynamics.py`` and imported only ``.config`` and ``.network``). The cases are the
papers' MNIST network (784-256-256-256-10 tanh, float64, feedback near the weight product) on 128
MNIST images of ``tests/reference``, with the settings of the side-by-side benchmark's rows:
``dfc_wake`` (library defaults), ``dfc_sleep``, ``dfc_sleep_float32``, ``strong_dfc_wake``,
``strong_dfc_ss_sleep_float32``. Prints the median time per call of each, old/new, and how far
apart the two sides' updates are under the same noise seed (1 - cos, the worst tensor): a
timing of two simulations that compute different things compares nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

from harness import agreement, build_module, load, load_excerpt, settings_of  # noqa: E402
from make_reference import inputs, near_weight_product  # noqa: E402

import lightning_dfc.core.rules as rules  # noqa: E402
from lightning_dfc.core import dynamics as new_dynamics  # noqa: E402

SIZES = [784, 256, 256, 256, 10]
CASES = ("dfc_wake", "dfc_sleep", "dfc_sleep_float32", "strong_dfc_wake", "strong_dfc_ss_sleep_float32")


def old_simulate(revision: str):
    """``simulate`` of the dynamics module at ``revision`` (``lightning_dfc/core/dynamics.py``, or
    ``lightning_dfc/dynamics.py`` before the core/shell split), importing today's core modules."""
    for file in ("lightning_dfc/core/dynamics.py", "lightning_dfc/dynamics.py"):
        shown = subprocess.run(["git", "show", f"{revision}:{file}"], cwd=REPO, capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise ValueError(f"revision {revision} has no dynamics module: {shown.stderr.strip()}")
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / "old_dynamics.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lightning_dfc.core._old_dynamics", path,
                                                  submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "lightning_dfc.core"  # .config, .network: today's modules
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    accepted = inspect.signature(module.simulate).parameters

    def simulate(*args, **kwargs):  # today's rules pass arguments the old one did not have yet
        unknown = {k: v for k, v in kwargs.items() if k not in accepted}
        if any(v is not None and v is not False for v in unknown.values()):
            raise ValueError(f"revision {revision}'s simulate has no {', '.join(unknown)} (asked for here)")
        return module.simulate(*args, **{k: v for k, v in kwargs.items() if k in accepted})

    return simulate


def _record(case: str) -> dict:
    record = dict(load(case))
    g = torch.Generator().manual_seed(0)
    weights = [torch.nn.init.xavier_normal_(torch.empty(o, i, dtype=torch.float64), generator=g)
               for i, o in zip(SIZES[:-1], SIZES[1:])]
    record["before"] = {"W": weights, "b": [torch.zeros(w.shape[0], dtype=torch.float64) for w in weights],
                        "Q": [q.double() for q in near_weight_product(torch, [w.float() for w in weights])]}
    return record


def _float32_sleep(settings: dict) -> dict:
    feedback = dict(settings["feedback"])
    feedback["simulation"] = {**feedback["simulation"], "dtype": "float32"}
    return feedback


def calls(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict:
    """One update per case, its noise drawn from ``gen``: the forward weights' (wake) or the
    feedback weights' (sleep), a list of tensors or a (tensors, stats) pair."""
    dfc, sleep, strong, ss = (_record(c) for c in ("dfc", "dfc_sleep", "strong_dfc_wake", "strong_dfc_ss_sleep"))
    wake = build_module(dfc, dynamics={**settings_of(dfc)["dynamics"], "early_stop": None, "outer_every": 10})
    sleep64 = build_module(sleep)
    sleep32 = build_module(sleep, feedback=_float32_sleep(settings_of(sleep)))
    strong_wake = build_module(strong)
    ss32 = build_module(ss, feedback=_float32_sleep(settings_of(ss)))
    return {
        "dfc_wake": lambda: wake.dfc_wake_update(x, y, gen),
        "dfc_sleep": lambda: sleep64.dfc_sleep_update(x, y, False, gen),
        "dfc_sleep_float32": lambda: sleep32.dfc_sleep_update(x, y, False, gen),
        "strong_dfc_wake": lambda: strong_wake.dfc_wake_update(x, y, gen),
        "strong_dfc_ss_sleep_float32": lambda: ss32.dfc_sleep_update(x, y, False, gen),
    }


def _tensors(update) -> list[torch.Tensor]:
    if hasattr(update, "tensors"):
        return update.tensors()
    return list(update[0]) if isinstance(update, tuple) else list(update)


def disagreement(old: list[torch.Tensor], new: list[torch.Tensor]) -> float:
    """The largest 1 - cos over the update tensors of the two sides."""
    if len(old) != len(new):
        raise ValueError(f"the two sides' updates have {len(old)} and {len(new)} tensors")
    return max(agreement(a.double(), b.double())[0] for a, b in zip(old, new))


def main(argv: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="revision before the core/shell split, e.g. 3cf54ec")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per side and case")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    excerpt = load_excerpt()
    x, y = inputs(excerpt["images"][:128], pool=1).double(), excerpt["labels"][:128]
    sides = {"old": old_simulate(args.old), "new": new_dynamics.simulate}
    results = []
    gen = torch.Generator()
    try:
        with torch.no_grad():
            for case, call in ((c, f) for c, f in calls(x, y, gen).items() if c in args.cases):
                updates = {}
                for side, simulate in sides.items():  # the same noise on both sides: is it the same update?
                    rules.simulate = simulate
                    gen.manual_seed(0)
                    updates[side] = _tensors(call())
                times = {"old": [], "new": []}
                for repeat in range(args.repeats + 1):
                    for side, simulate in sides.items():
                        rules.simulate = simulate  # the rules call the module-level name
                        t0 = time.perf_counter()
                        call()
                        if repeat:  # the first round warms up
                            times[side].append(time.perf_counter() - t0)
                rules.simulate = new_dynamics.simulate
                old, new = statistics.median(times["old"]), statistics.median(times["new"])
                differ = disagreement(updates["old"], updates["new"])
                results.append((case, old, new, differ))
                print(f"{case:28s} old {old:.4f} s  new {new:.4f} s  old/new {old / new:.3f}  "
                      f"update 1 - cos {differ:.1e} (same noise seed)", flush=True)
    finally:  # even when a case fails: the rules' simulate is today's again
        rules.simulate = new_dynamics.simulate
    return results


if __name__ == "__main__":
    main()
