"""Does ``torch.compile`` of a whole simulation step pay on this machine? One float32 sleep-like
Euler step of the papers' network (the drive GEMM with its noise, then for each layer the basal
GEMM, the somatic update and the rate deviation, all layers in one function), eager against
``torch.compile`` (inductor), per step, in one process.

    python benchmarks/compile_step.py [--steps 200] [--repeats 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SIZES = [256, 256, 256, 10]  # the papers' hidden and output layers (layer 1's input is constant)


def make(batch: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(SIZES[i], SIZES[i - 1], generator=g) * 0.06 for i in range(1, len(SIZES))]
    v_ff = [torch.randn(batch, k, generator=g) * 0.5 for k in SIZES]
    r_ff = [torch.tanh(v) for v in v_ff]
    control = torch.randn(batch, SIZES[-1], generator=g) * 0.01
    q_t = torch.randn(SIZES[-1], sum(SIZES), generator=g) * 0.1
    eta = torch.randn(batch, sum(SIZES), generator=g) * 0.01

    def step(dv: list[torch.Tensor], dr: list[torch.Tensor], rate: float):
        apical = torch.split(torch.addmm(eta, control, q_t), SIZES, 1)
        new_dv, new_dr = [], []
        for i, a in enumerate(apical):
            soma = a if i == 0 else torch.addmm(a, dr[i - 1], weights[i - 1].T)
            d = dv[i] + rate * (soma - dv[i])
            new_dv.append(d)
            new_dr.append(d if i == len(SIZES) - 1 else torch.tanh(v_ff[i] + d) - r_ff[i])
        return new_dv, new_dr

    state = ([torch.zeros(batch, k) for k in SIZES], [torch.zeros(batch, k) for k in SIZES])
    return step, state


def per_step(step, state, steps: int, repeats: int) -> float:
    def run(n):
        dv, dr = state
        for _ in range(n):
            dv, dr = step(dv, dr, 0.1)
    run(3)  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="the eager step only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    step, state = make()
    results = {"eager": per_step(step, state, args.steps, args.repeats)}
    if not args.no_compile:
        results["compiled"] = per_step(torch.compile(step, dynamic=False), state, args.steps, args.repeats)
    for name, seconds in results.items():
        print(f"{name:9s} {seconds * 1e6:7.1f} us per step")
    return results


if __name__ == "__main__":
    main()
