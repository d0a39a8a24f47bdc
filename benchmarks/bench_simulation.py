"""Per-batch time and peak memory of the DFC wake phase (every variant) and of the sleep phase.

Prints a Markdown table (optionally also written to ``--output``). Defaults are the paper's MNIST
configuration: 784-256-256-256-10 tanh, batch 128, float64, T = 1000, dt = 0.02, k_p = 2,
tau_v = 0.2, alpha = 1.389e-3, lambda = 0.07794, proactive controller. Inputs are standard-normal
with uniform labels, or MNIST training images with ``--data-dir`` (the cost of one Euler step does
not depend on the data; how soon the dynamics settle does).

Every table row is measured in a fresh child process (this script re-invoked with a hidden
``--child`` argument): the child loads the network and the batch, calls the phase once (the warm-up
call, on which peak memory is measured: the peak RSS of the call minus the RSS right before it,
from ``/proc/self/status`` VmHWM after resetting it through ``/proc/self/clear_refs``; where that
is not possible, ``ru_maxrss``), then takes ``--repeats`` timed samples and reports the median.

The machine may be shared (2 cores: one foreign busy process slows a 2-thread BLAS call many
times over). Each sample therefore records how many cores other processes kept busy during it
(from ``/proc/stat`` minus this process's own CPU time); the child waits for a quiet machine
before each sample and retries samples above ``--max-foreign-load``. The table shows that load,
and the float64 GEMM rate measured right before and after the samples: a virtual CPU's speed
can change over time without any visible load, and times are comparable only at similar rates.

For DFC the rows also give the Euler steps simulated and the cosine between the update and the
exact reference update (float64, no early stop, ``outer_every=1``) on the same weights and batch,
computed once per invocation in the parent process.

Examples::

    python benchmarks/bench_simulation.py --repeats 3
    python benchmarks/bench_simulation.py --feedback pretrained --repeats 3 --output table.md
    python benchmarks/bench_simulation.py --variants dfc --tolerance 1e-3 1e-5 --outer-every 1 10
    python benchmarks/bench_simulation.py --variants --profile-steps 200
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from lightning_dfc import MLP, DFCNetwork, SimulationConfig, sleep_defaults
from lightning_dfc.core.dynamics import feedforward, output_jacobian
from lightning_dfc.core.rules import feedback_update
from lightning_dfc.core.methods import forward_update

AUTHORS_DFC_S = 11.0  # the authors' implementation, DFC wake phase, per batch (2-core machine)
AUTHORS_SLEEP_S = 0.4  # the same, sleep phase
METHOD_NAMES = ("dfc", "dfc_ss", "dfc_ssa", "dfa", "bp")  # the forward updates timed
PHASES = (*METHOD_NAMES, "sleep")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
LOSS = "cross_entropy"
MIN_SAMPLE_S = 0.3  # a timed sample loops short calls until it lasts this long
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
RESULT_TAG = "@@RESULT@@"


# ----------------------------------------------------------------------------------------------
# helpers shared by parent and child


def wake_config(
    args: argparse.Namespace, tolerance: float, outer_every: int, early_stop: bool
) -> SimulationConfig:
    return SimulationConfig(
        dt=args.dt,
        steps=args.steps,
        k_p=args.k_p,
        alpha=args.alpha,
        tau_v=args.tau_v,
        proactive=True,
        early_stop=early_stop,
        tolerance=tolerance,
        outer_every=outer_every,
        compile=args.compile,
    )


def build_network(sizes: list[int], feedback: str) -> DFCNetwork:
    init = "weight_product" if feedback == "weight_product" else "xavier_normal"
    return DFCNetwork(MLP(sizes, activation="tanh"), feedback_init=init)


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def busy_jiffies() -> int:
    """Jiffies all CPUs spent busy (including steal) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def own_jiffies() -> int:
    """Jiffies this process (all its threads) spent on CPU (utime + stime)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def foreign_load(busy0: int, own0: int, start: float) -> float:
    """Mean number of cores other processes kept busy since (busy0, own0, start)."""
    elapsed = max(time.perf_counter() - start, 1e-9)
    return max(0.0, (busy_jiffies() - busy0 - (own_jiffies() - own0)) / (elapsed * CLK_TCK))


def wait_quiet(threshold: float, max_wait: float, window: float = 0.5) -> float:
    """Sleep in ``window``-second slices until other processes use <= ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, own0, start = busy_jiffies(), own_jiffies(), time.perf_counter()
        time.sleep(window)
        load = foreign_load(busy0, own0, start)
        if load <= threshold or time.monotonic() >= deadline:
            return load


def gemm_gflops(calls: int = 100) -> float:
    """Calibration: float64 GEMM rate (128x256 @ 256x256, median of ``calls``) right now.

    The wall time of every phase scales with how fast the (possibly shared, virtualised) CPU runs
    at the moment; this number lets rows measured at different times be compared.
    """
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(128, 256, generator=gen, dtype=torch.float64)
    w = torch.randn(256, 256, generator=gen, dtype=torch.float64)
    b = torch.randn(256, generator=gen, dtype=torch.float64)
    for _ in range(10):
        torch.addmm(b, a, w.T)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        torch.addmm(b, a, w.T)
        times.append(time.perf_counter() - start)
    return 2 * 128 * 256 * 256 / statistics.median(times) / 1e9


def reset_peak_rss() -> bool:
    """Reset the peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return read_status_kb("VmHWM") is not None
    except OSError:
        return False


def machine_line(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = ""
    for item in torch.__config__.show().replace(",", "\n").splitlines():
        if "BLAS_INFO=" in item:
            blas = ", BLAS " + item.split("=", 1)[1].strip()
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}{blas}, {threads} torch threads"
    )


def mnist_images(
    data_dir: str, count: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random MNIST training images (flattened, normalised as the data module does:
    (pixel / 255 - 0.1307) / 0.3081) and labels, read from ``<data_dir>/MNIST/raw``."""
    raw = os.path.join(data_dir, "MNIST", "raw")
    with open(os.path.join(raw, "train-images-idx3-ubyte"), "rb") as f:
        images = bytearray(f.read())
    with open(os.path.join(raw, "train-labels-idx1-ubyte"), "rb") as f:
        labels = bytearray(f.read())
    pixels = torch.frombuffer(images, dtype=torch.uint8, offset=16).reshape(-1, 784)
    targets = torch.frombuffer(labels, dtype=torch.uint8, offset=8).long()
    if count > pixels.shape[0]:
        raise SystemExit(f"{raw} holds {pixels.shape[0]} images, {count} needed")
    index = torch.randperm(pixels.shape[0], generator=gen)[:count]
    x = (pixels[index].to(torch.get_default_dtype()) / 255.0 - 0.1307) / 0.3081
    return x, targets[index]


def qbar_alignment(net: DFCNetwork, x: torch.Tensor) -> float:
    """Cosine between Qbar and the batch-mean output Jacobian Jbar^T at the feedforward point."""
    p = net.params()
    jac = output_jacobian(p, feedforward(p, x).v).mean(0)  # (n_L, S)
    qbar = torch.cat(p.feedback, 0)  # (S, n_L)
    return cosine(jac.T.reshape(-1), qbar.reshape(-1))


# ----------------------------------------------------------------------------------------------
# child: one measurement in a fresh process


def run_child(spec: dict) -> dict:
    dtype = DTYPES[spec["dtype"]]
    torch.set_default_dtype(dtype)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    state = torch.load(spec["state"], weights_only=True)
    net = build_network(spec["sizes"], spec["feedback"])
    net.load_state_dict(state["net"])
    x, y = state["x"], state["y"]
    phase = spec["phase"]
    if phase == "sleep":
        cfg = sleep_defaults()
        gen = torch.Generator().manual_seed(spec["seed"] + 7)

        def call():
            grads, stats = feedback_update(net.params(), x, cfg, generator=gen)
            return grads, stats
    else:
        cfg = SimulationConfig(**spec["cfg"])

        def call():
            up = forward_update(phase, net.params(), x, y, LOSS, spec["lambda"], cfg)
            return up.tensors(), up.stats

    wait_quiet(spec["max_foreign"], spec["wait_quiet"])
    rss_before = read_status_kb("VmRSS") or 0
    hwm = reset_peak_rss()
    rss_before = read_status_kb("VmRSS") or rss_before
    start = time.perf_counter()
    tensors, stats = call()  # warm-up call: peak memory is measured on it
    warm_s = time.perf_counter() - start
    if hwm:
        peak_kb = read_status_kb("VmHWM")
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    # Timed samples. Each sample loops the call until it lasts >= MIN_SAMPLE_S (short phases) and
    # records how many cores other processes kept busy meanwhile (/proc/stat minus this
    # process). Before each sample we wait (up to --wait-quiet s) for the machine to be quiet;
    # samples above --max-foreign-load are retried, up to 5x --repeats attempts.
    calls = max(1, math.ceil(MIN_SAMPLE_S / max(warm_s, 1e-6))) if warm_s < MIN_SAMPLE_S else 1
    samples = []  # (seconds per call, foreign cores)
    calib = [gemm_gflops()]
    for _ in range(5 * spec["repeats"]):
        wait_quiet(spec["max_foreign"], spec["wait_quiet"])
        busy0, own0, start = busy_jiffies(), own_jiffies(), time.perf_counter()
        for _ in range(calls):
            tensors, stats = call()
        wall = time.perf_counter() - start
        samples.append((wall / calls, foreign_load(busy0, own0, start)))
        if sum(f <= spec["max_foreign"] for _, f in samples) >= spec["repeats"]:
            break
    calib.append(gemm_gflops())
    clean = [s for s in samples if s[1] <= spec["max_foreign"]]
    if len(clean) >= spec["repeats"]:
        used = clean[: spec["repeats"]]
    else:  # contended: the least disturbed samples
        used = sorted(samples, key=lambda sample: sample[1])[: spec["repeats"]]
    times = [t for t, _ in used]
    out = {
        "phase": phase,
        "times": times,
        "warm_s": warm_s,
        "calls_per_sample": calls,
        "median_s": statistics.median(times),
        "foreign": statistics.mean(f for _, f in used),
        "contended": len(clean) < spec["repeats"],
        "gflops": statistics.mean(calib),
        "attempts": len(samples),
        "peak_mb": peak_kb / 1024,
        "delta_mb": (peak_kb - rss_before) / 1024,
        "mem_method": "VmHWM" if hwm else "ru_maxrss",
        "threads": torch.get_num_threads(),
        "stats": {k: float(v) for k, v in stats.items()},
        "finite": bool(all(torch.isfinite(t).all() for t in tensors)),
    }
    if spec.get("reference") and phase == "dfc":
        ref = torch.load(spec["reference"], weights_only=True)
        ref_layers = ref["tensors"]
        out["cos"] = cosine(flat(tensors), flat(ref_layers))
        out["cos_min"] = min(cosine(flat([a]), flat([b])) for a, b in zip(tensors, ref_layers))
    return out


# ----------------------------------------------------------------------------------------------
# parent: set up, run the children, print the table


def _profiled(fn, steps: int, title: str, args: argparse.Namespace) -> list[str]:
    """torch.profiler table (self CPU time per operator, per Euler step) of one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up
    wait_quiet(args.max_foreign_load, args.wait_quiet)
    busy0, own0, start = busy_jiffies(), own_jiffies(), time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    load = foreign_load(busy0, own0, start)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_us = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"{title} (torch.profiler, self CPU time; wall {wall:.3f} s with profiler overhead, other "
        f"load {load:.2f} cores):",
        "",
        "| operator | calls per step | ms per call | ms per step | share |",
        "|---|---|---|---|---|",
    ]
    for e in events:
        if e.self_cpu_time_total < 0.01 * total_us:
            continue
        lines.append(
            f"| {e.key} | {e.count / steps:.1f} | {e.self_cpu_time_total / e.count / 1e3:.3f} | "
            f"{e.self_cpu_time_total / steps / 1e3:.3f} | "
            f"{100 * e.self_cpu_time_total / total_us:.0f} % |"
        )
    lines.append(f"| all operators | | | {total_us / steps / 1e3:.3f} | 100 % |")
    return lines


def profile_table(
    net: DFCNetwork, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> str:
    """Per-operator cost per Euler step of the DFC wake phase (no early stop) and of the sleep
    phase, then the per-step primitives timed alone."""
    steps = args.profile_steps
    cfg = wake_config(args, args.tolerance[0], args.outer_every[0], early_stop=False)
    fields = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    cfg = SimulationConfig(**{**fields, "steps": steps + 1})
    params = net.params()
    lines = _profiled(
        lambda: forward_update("dfc", params, x, y, LOSS, args.lam, cfg), steps,
        f"Profile of one DFC wake call with {steps} Euler steps (early stop off, outer_every "
        f"{args.outer_every[0]}, {args.dtype})", args,
    )
    sleep_cfg = sleep_defaults()
    gen = torch.Generator().manual_seed(args.seed + 7)
    lines += [""] + _profiled(
        lambda: feedback_update(params, x, sleep_cfg, generator=gen), sleep_cfg.steps - 1,
        f"Profile of one sleep call ({sleep_cfg.steps - 1} Euler-Maruyama steps, {args.dtype})",
        args,
    )
    lines += ["", primitives_table(params, x)]
    return "\n".join(lines)


def primitives_table(params, x: torch.Tensor) -> str:
    """Median time of the per-step primitives at the benchmark's shapes, 1 thread and default."""
    batch = x.shape[0]
    widths = [w.shape[0] for w in params.weights]
    hidden = widths[1] if len(widths) > 2 else widths[0]
    n_out, total = widths[-1], sum(widths)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(batch, hidden, generator=gen)
    w = torch.randn(hidden, hidden, generator=gen)
    b = torch.randn(hidden, generator=gen)
    u = torch.randn(batch, n_out, generator=gen)
    q = torch.randn(n_out, total, generator=gen)
    ops = [
        (f"addmm {batch}x{hidden} @ {hidden}x{hidden} (layer 2/3 basal input)",
         lambda: torch.addmm(b, a, w.T), 2 * batch * hidden * hidden),
        (f"tanh {batch}x{hidden}", lambda: torch.tanh(a), 0),
        (f"drive u @ Qbar^T: {batch}x{n_out} @ {n_out}x{total}", lambda: u @ q,
         2 * batch * n_out * total),
        (f"lerp_ {batch}x{hidden} (soma update)", lambda: a.lerp_(a, 0.1), 0),
    ]
    default = torch.get_num_threads()
    lines = [
        f"Per-step primitives ({str(torch.get_default_dtype()).replace('torch.', '')}, median "
        "of 200 calls each):",
        "",
        f"| primitive | ms, {default} threads | GFLOP/s | ms, 1 thread |",
        "|---|---|---|---|",
    ]

    def median_ms(fn) -> float:
        for _ in range(20):
            fn()
        times = []
        for _ in range(200):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    for name, fn, flops in ops:
        torch.set_num_threads(default)
        ms = median_ms(fn)
        torch.set_num_threads(1)
        ms1 = median_ms(fn)
        torch.set_num_threads(default)
        rate = f"{flops / ms / 1e6:.1f}" if flops else "-"
        lines.append(f"| {name} | {ms:.3f} | {rate} | {ms1:.3f} |")
    return "\n".join(lines)


def pretrain_feedback(net: DFCNetwork, args: argparse.Namespace, gen: torch.Generator,
                      batches: list[torch.Tensor] | None) -> None:
    """Plain SGD on the feedback weights: ``args.pretrain_batches`` sleep phases (on ``batches``,
    or on standard-normal inputs)."""
    cfg = sleep_defaults()
    for b in range(args.pretrain_batches):
        if batches is not None:
            xb = batches[b]
        else:
            xb = torch.randn(args.batch_size, args.sizes[0], generator=gen)
        grads, _ = feedback_update(net.params(), xb, cfg, generator=gen)
        with torch.no_grad():
            for q, g in zip(net.trainable_feedback(), grads):
                q.sub_(args.pretrain_lr * g)
    if not all(bool(torch.isfinite(q).all()) for q in net.feedback):
        raise SystemExit(
            f"pretrained feedback is not finite (lr {args.pretrain_lr}): lower --pretrain-lr"
        )


def exact_reference(
    net: DFCNetwork, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> tuple[list, dict]:
    """DFC update without early stop and with outer_every=1, in float64."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref_net = build_network(args.sizes, args.feedback).to(torch.float64)
        ref_net.load_state_dict({k: v.to(torch.float64) for k, v in net.state_dict().items()})
        cfg = wake_config(args, args.tolerance[0], 1, early_stop=False)
        up = forward_update("dfc", ref_net.params(), x.to(torch.float64), y, LOSS, args.lam, cfg)
    finally:
        torch.set_default_dtype(default)
    return up.tensors(), up.stats


def fmt_cos(value: float) -> str:
    """Cosines near 1 as ``1 - 8.1e-12`` (clearer than 0.99999999999)."""
    gap = 1.0 - value
    if gap < 1e-15:
        return "1 - <1e-15"
    if gap < 1e-4:
        return f"1 - {gap:.1e}"
    return f"{value:.6f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 256, 256, 256, 10],
                        help="layer widths n_0 ... n_L (tanh hidden layers, linear output)")
    parser.add_argument("--steps", type=int, default=1000,
                        help="time points T of the wake simulation")
    parser.add_argument("--dt", type=float, default=0.02)
    parser.add_argument("--k-p", type=float, default=2.0)
    parser.add_argument("--tau-v", type=float, default=0.2)
    parser.add_argument("--alpha", type=float, default=1.389e-3)
    parser.add_argument("--lambda", dest="lam", type=float, default=0.07794, help="target stepsize")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed samples after 1 warm-up call (median)")
    parser.add_argument("--variants", nargs="*", choices=PHASES, default=list(PHASES),
                        help="wake-phase variants and/or 'sleep' (none: only --profile-steps)")
    parser.add_argument("--feedback", choices=["xavier_normal", "weight_product", "pretrained"],
                        default="xavier_normal")
    parser.add_argument("--pretrain-batches", type=int, default=30)
    parser.add_argument("--pretrain-lr", type=float, default=100.0,
                        help="plain-SGD learning rate of the feedback pretraining (Q -= lr * grad)")
    parser.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tolerance", type=float, nargs="+", default=[SimulationConfig().tolerance],
                        help="early-stop tolerance(s); several give one DFC/DFC-SS row each")
    parser.add_argument("--outer-every", type=int, nargs="+", default=[10],
                        help="outer_every value(s); several give one DFC row each")
    parser.add_argument("--compile", action="store_true",
                        help="SimulationConfig.compile: torch.compile each layer's element-wise step")
    parser.add_argument("--no-reference", action="store_true", help="skip the exact DFC reference")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--max-foreign-load", type=float, default=0.25,
                        help="retry timed samples during which other processes kept more than this "
                        "many cores busy on average (up to 5x --repeats attempts)")
    parser.add_argument("--wait-quiet", type=float, default=60.0,
                        help="before each timed sample, wait up to this many seconds for other "
                        "processes to use <= --max-foreign-load cores")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="also profile a DFC wake call of this many Euler steps and a sleep "
                        "call (per-operator tables) and time the per-step primitives")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="use MNIST training images from <DIR>/MNIST/raw "
                        "(torchvision layout) instead of standard-normal inputs")
    parser.add_argument("--output", help="also write the table (Markdown) to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = run_child(json.loads(args.child))
        print(RESULT_TAG + json.dumps(result))
        return

    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    dtype = DTYPES[args.dtype]
    # The network and the inputs are drawn in float64 and then cast, so that float32 runs use the
    # same (rounded) weights and batch as float64 runs with the same seed.
    torch.set_default_dtype(torch.float64)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    if len(args.sizes) < 2 or min(args.sizes) < 1 or args.sizes[-1] < 2:
        parser.error("--sizes needs >= 2 positive widths and an output width >= 2 (classes)")
    net = build_network(args.sizes, args.feedback)
    pretrain_x = None
    if args.data_dir:
        if args.sizes[0] != 784 or args.sizes[-1] != 10:
            parser.error("--data-dir (MNIST) needs sizes starting with 784 and ending with 10")
        extra = args.pretrain_batches if args.feedback == "pretrained" else 0
        images, labels = mnist_images(args.data_dir, args.batch_size * (1 + extra), gen)
        x, y = images[: args.batch_size], labels[: args.batch_size]
        pretrain_x = images[args.batch_size :].split(args.batch_size)
        input_note = f"MNIST training images from {args.data_dir} (normalised), seed {args.seed}"
    else:
        x = torch.randn(args.batch_size, args.sizes[0], generator=gen)
        y = torch.randint(0, args.sizes[-1], (args.batch_size,), generator=gen)
        input_note = f"standard-normal x, uniform labels, seed {args.seed}"
    torch.set_default_dtype(dtype)
    net = net.to(dtype)
    x = x.to(dtype)
    if pretrain_x is not None:
        pretrain_x = [b.to(dtype) for b in pretrain_x]

    feedback_note = args.feedback
    align0 = qbar_alignment(net, x)
    if args.feedback == "pretrained":
        pretrain_feedback(net, args, gen, pretrain_x)
        feedback_note = (
            f"pretrained (xavier_normal, then {args.pretrain_batches} sleep batches of plain SGD "
            f"on other input batches, Q -= {args.pretrain_lr:g} * grad; "
            f"cos(Qbar, mean Jbar^T) {align0:.2f} -> {qbar_alignment(net, x):.2f}; "
            f"|Q_i| {', '.join(f'{float(q.norm()):.1f}' for q in net.feedback)})"
        )
    else:
        feedback_note += f" (cos(Qbar, mean Jbar^T) {align0:.2f})"

    with tempfile.TemporaryDirectory(prefix="bench_dfc_") as tmp:
        text = measure(args, net, x, y, tmp, feedback_note, input_note)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


def measure(args: argparse.Namespace, net: DFCNetwork, x: torch.Tensor, y: torch.Tensor,
            tmp: str, feedback_note: str, input_note: str) -> str:
    """Run one child per table row (and the reference, the profile); return the Markdown text."""
    state_path = os.path.join(tmp, "state.pt")
    torch.save({"net": net.state_dict(), "x": x, "y": y}, state_path)

    ref_path, ref_note = None, ""
    if "dfc" in args.variants and not args.no_reference:
        ref_tensors, ref_stats = exact_reference(net, x, y, args)
        ref_path = os.path.join(tmp, "reference.pt")
        torch.save({"tensors": ref_tensors}, ref_path)
        ref_note = (
            f"cos vs exact: cosine between the update (all tensors concatenated; in brackets the "
            f"worst single tensor) and the exact reference update on the same weights and batch "
            f"(float64, early_stop off, outer_every 1, {int(ref_stats['steps'])} steps)."
        )

    rows = []
    for phase in args.variants:
        if phase in ("dfc", "dfc_ss"):
            outers = args.outer_every if phase == "dfc" else [args.outer_every[0]]
            tols = args.tolerance if args.early_stop else [args.tolerance[0]]
            settings = [(tol, oe) for tol in tols for oe in outers]
        else:
            settings = [(args.tolerance[0], args.outer_every[0])]
        for tol, oe in settings:
            cfg = wake_config(args, tol, oe, args.early_stop)
            spec = {
                "phase": phase, "dtype": args.dtype, "threads": args.threads, "sizes": args.sizes,
                "feedback": args.feedback, "state": state_path, "seed": args.seed,
                "repeats": args.repeats, "lambda": args.lam, "reference": ref_path,
                "max_foreign": args.max_foreign_load, "wait_quiet": args.wait_quiet,
                "cfg": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            }
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                capture_output=True, text=True,
            )
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
            if proc.returncode != 0 or not found:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise SystemExit(f"measurement of {phase} failed (exit code {proc.returncode})")
            res = json.loads(found[-1][len(RESULT_TAG):])
            res["tol"], res["outer_every"] = tol, oe
            rows.append(res)
            print(f"  measured {phase:8s} tol={tol:g} outer_every={oe}: {res['median_s']:.3f} s "
                  f"(other load {res['foreign']:.2f}, {res['attempts']} samples, "
                  f"GEMM {res['gflops']:.1f} GFLOP/s)",
                  file=sys.stderr, flush=True)

    threads = rows[0]["threads"] if rows else torch.get_num_threads()
    table = [
        machine_line(threads),
        "",
        f"Network {'-'.join(map(str, args.sizes))} tanh, batch {args.batch_size}, {args.dtype}, "
        f"T={args.steps}, dt={args.dt:g}, k_p={args.k_p:g}, tau_v={args.tau_v:g}, "
        f"alpha={args.alpha:g}, lambda={args.lam:g}, proactive; early stop "
        f"{'on' if args.early_stop else 'off'}; feedback {feedback_note}. "
        f"Inputs: {input_note}. "
        f"Time per batch: median of {args.repeats} samples after 1 warm-up call, each sample "
        f"looping the call for >= {MIN_SAMPLE_S:g} s, taken when the machine is quiet; samples "
        f"during which other processes kept > {args.max_foreign_load:g} cores busy are retried "
        "('other load' = mean over the samples used; '*' = not enough quiet samples). "
        "GEMM GFLOP/s: float64 128x256 @ 256x256 rate measured right before and after the "
        "samples (the speed of the CPU at that moment; 'steal' by other virtual machines lowers "
        "it). "
        "Memory: peak RSS of the warm-up call in a fresh process "
        f"({rows[0]['mem_method'] if rows else 'VmHWM'}), absolute (includes the imports) and the "
        "increase over the RSS right before the call. Sleep: sleep_defaults() (T=48, noisy)."
        + (f" {ref_note}" if ref_note else ""),
        "",
        "| phase | tol | outer_every | steps | non-conv. | time [s] | min-max [s] | ms/step "
        "| other load [cores] | GEMM GFLOP/s | peak RSS [MB] | + during call [MB] "
        "| cos vs exact (worst tensor) | vs authors (11 s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = table[:1] if not rows else table
    paper_shape = (
        args.sizes == [784, 256, 256, 256, 10] and args.batch_size == 128 and args.steps == 1000
    )
    for res in rows:
        phase, st = res["phase"], res["stats"]
        simulates = phase in ("dfc", "dfc_ss")
        steps = str(int(st["steps"])) if "steps" in st and (simulates or phase == "sleep") else "-"
        nonconv = str(int(st["non_converged"])) if simulates and "non_converged" in st else "-"
        tol = f"{res['tol']:g}" if simulates and args.early_stop else "-"
        oe = str(res["outer_every"]) if phase == "dfc" else "-"
        cos = "-"
        if "cos" in res:
            cos = f"{fmt_cos(res['cos'])} ({fmt_cos(res['cos_min'])})"
        speed = "-"
        if not paper_shape and phase in ("dfc", "sleep"):
            speed = "n/a (not the paper's shape)"
        elif phase == "dfc":
            speed = f"{AUTHORS_DFC_S / res['median_s']:.1f}x"
        elif phase == "sleep":
            speed = f"({AUTHORS_SLEEP_S / res['median_s']:.1f}x vs 0.4 s)"
        label = "sleep (feedback)" if phase == "sleep" else f"wake {phase}"
        if not res["finite"]:
            label += " NON-FINITE"
        times = res["times"]
        per_step = "-"
        if steps != "-" and int(st["steps"]) > 0:
            per_step = f"{1e3 * res['median_s'] / st['steps']:.2f}"
        star = "*" if res["contended"] else ""
        lines.append(
            f"| {label} | {tol} | {oe} | {steps} | {nonconv} | {res['median_s']:.3f}{star} | "
            f"{min(times):.3f}-{max(times):.3f} | {per_step} | {res['foreign']:.2f} | "
            f"{res['gflops']:.1f} | "
            f"{res['peak_mb']:.0f} | {res['delta_mb']:.1f} | {cos} | {speed} |"
        )
    if args.profile_steps:
        lines += ["", profile_table(net, x, y, args)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
