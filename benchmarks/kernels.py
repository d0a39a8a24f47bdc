"""The CPU kernels the fast passes are bound by, and whether the machine's cores are real:
the numbers behind ``docs/performance.md``'s section on the new VM.

* the fused state's in-place float32 GEMM, 128 x 267 times 267 x 256 (``addmm_``), 1 thread;
* float32 ``tanh`` and ``sigmoid`` on 128 x 256;
* the same GEMM in two processes at once (each should keep its speed on two real cores);
* the fast DFC sleep and wake passes on half a batch against a whole one (what one DDP process
  of half a batch should cost), the papers' network and published settings;
* gloo's collectives between two processes on this machine (what a DDP step pays per
  reduction): a barrier, an all-reduce of one number, and one of a DFC step's 7,690 feedback
  updates.

    python benchmarks/kernels.py [--repeats 3000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))


def per_call_us(fn, repeats: int) -> float:
    for _ in range(max(repeats // 10, 1)):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def gemm_us(repeats: int) -> float:
    torch.set_num_threads(1)
    x, m, v = torch.randn(128, 267), torch.randn(267, 256), torch.randn(128, 256)
    return per_call_us(lambda: v.addmm_(x, m, beta=0.9, alpha=0.1), repeats)


def gemm_pair_us(repeats: int) -> list[float]:
    """The GEMM timed in two processes running at once (this script with ``--gemm-only``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--gemm-only", "--repeats", str(repeats)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return [float(p.communicate()[0].strip()) for p in procs]


def _gloo_rank(rank: int, port: int, repeats: int) -> None:
    """One of the two processes of :func:`gloo_us`: prints its median microseconds per call."""
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tiny, updates = torch.zeros(1, dtype=torch.float64), torch.zeros(7690, dtype=torch.float64)
    calls = {"barrier": dist.barrier, "all_reduce_1": lambda: dist.all_reduce(tiny),
             "all_reduce_7690": lambda: dist.all_reduce(updates)}
    out = {}
    for name, fn in calls.items():
        dist.barrier()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1e6
    dist.destroy_process_group()
    print(json.dumps(out))


def gloo_us(repeats: int) -> dict[str, float]:
    """gloo's barrier and all-reduces between two processes (this script with ``--gloo-rank``),
    median microseconds per call, the slower rank's."""
    import json
    import socket

    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--gloo-port", str(port), "--repeats", str(repeats)]
    procs = [subprocess.Popen([*cmd, "--gloo-rank", str(r)], stdout=subprocess.PIPE, text=True) for r in range(2)]
    ranks = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return {name: max(r[name] for r in ranks) for name in ranks[0]}


def half_batch_ms(repeats: int) -> dict[str, tuple[float, float]]:
    """Median ms of the fast DFC sleep and wake passes at B = 128 and B = 64."""
    from numerics_equivalence import inputs, load_excerpt, module

    excerpt = load_excerpt()
    x, y = inputs(excerpt["images"][:128], pool=1), excerpt["labels"][:128]
    result = {}
    for case, phase in (("dfc_sleep", "sleep"), ("dfc", "wake")):
        model = module(case, "fast")
        times = []
        for batch in (128, 64):
            xb, yb = x[:batch], y[:batch]

            def call():
                generator = torch.Generator().manual_seed(0)
                if phase == "sleep":
                    return model.dfc_sleep_update(xb, yb, False, generator)
                return model.dfc_wake_update(xb, yb, generator)

            call()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                samples.append(time.perf_counter() - start)
            times.append(1e3 * statistics.median(samples))
        result[f"DFC {phase}"] = (times[0], times[1])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3000, help="calls per kernel timing")
    parser.add_argument("--pass-repeats", type=int, default=15, help="calls per pass timing")
    parser.add_argument("--gemm-only", action="store_true", help=argparse.SUPPRESS)  # one side of the pair
    parser.add_argument("--gloo-rank", type=int, help=argparse.SUPPRESS)  # one side of the gloo pair
    parser.add_argument("--gloo-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gemm_only:
        print(gemm_us(args.repeats))
        return {}
    if args.gloo_rank is not None:
        _gloo_rank(args.gloo_rank, args.gloo_port, min(args.repeats, 500))
        return {}
    torch.set_num_threads(1)
    v = torch.randn(128, 256) * 1.5
    out = torch.empty_like(v)
    report = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gemm_us": gemm_us(args.repeats),
        "tanh_us": per_call_us(lambda: torch.tanh(v, out=out), args.repeats),
        "sigmoid_us": per_call_us(lambda: torch.sigmoid(v, out=out), args.repeats),
        "gemm_pair_us": gemm_pair_us(args.repeats),
        "half_batch_ms": half_batch_ms(args.pass_repeats),
        "gloo_us": gloo_us(args.repeats),
    }
    print(f"CPU capability: {report['cpu_capability']}")
    print(f"GEMM 128x267 @ 267x256 (addmm_, float32): {report['gemm_us']:.0f} us alone, "
          f"{' / '.join(f'{t:.0f}' for t in report['gemm_pair_us'])} us in two processes at once")
    print(f"float32 128x256: tanh {report['tanh_us']:.0f} us, sigmoid {report['sigmoid_us']:.0f} us")
    for name, (full, half) in report["half_batch_ms"].items():
        print(f"{name} (fast): B = 128 {full:.1f} ms, B = 64 {half:.1f} ms ({half / full:.2f})")
    gloo = report["gloo_us"]
    print(f"gloo, 2 processes: barrier {gloo['barrier']:.0f} us, all-reduce of 1 number {gloo['all_reduce_1']:.0f} us, "
          f"of 7,690 {gloo['all_reduce_7690']:.0f} us")
    return report


if __name__ == "__main__":
    main()
