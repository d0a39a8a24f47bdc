"""Per-batch time of the authors' code and ours, side by side in one process, same weights and batch.

For each code base a child process builds the authors' network from their own config (parsed by
their own parser, as ``tests/reference/make_reference.py`` does), copies its parameters into our
module (the mapping of ``tests/reference/authors.py``), and times the same calls on the same batch:

* deep_feedback_control @6208695, ``configs/configs_mnist/mnist_dfc.py`` (784-256-256-256-10 tanh,
  batch 128): the wake pass (``net.forward`` + ``net.backward``: forward-weight update) and the
  sleep pass (``net.forward`` + ``compute_feedback_gradients``); their training loop runs 1 wake and
  3 sleep passes per forward epoch (1 sleep epoch before, ``extra_fb_epochs`` = 2 after), so the
  *epoch-equivalent* ratio is (wake + 3 sleep) / (wake + 3 sleep).
* strong_dfc @bb0f0a1, the published MNIST commands of ``dfc/EXPERIMENTS.rst``: single phase (the
  noisy wake pass that also updates Q) and two phases (the noise-free steady-state wake pass, and
  the noisy sleep pass; 1 wake + 1 sleep pass per epoch, ``extra_fb_epochs`` = 0).

Our side runs, in separate rows, the two numerics presets (``lightning_dfc.core.numerics``):
``exact``, the published numerics (every Euler step, float64, Gaussian noise: the authors'
numbers draw for draw), and ``fast``, the library's default (float32, the early stop with the
rest of a settled simulation in closed form, two-point noise: the same learning, not the same
numbers per noise draw). The models are float64 on both sides.

The feedback weights stand in for pre-trained ones: the weight product W_{i+1}^T ... W_L^T plus
30 % noise (the reference tests' choice), so that the wake dynamics converge as after the paper's
pre-training. Inputs: the first 128 images of ``tests/reference/mnist_excerpt.pt``, standardised
as the authors' loaders do. Everything in float64 (the published runs' precision).

Timing: one warm-up call per side, then ``--repeats`` samples, alternating the two sides so that
a drift of the machine's speed hits both; the table gives medians and the ratio of medians
(absolute times do not carry over between machines or hours). One untimed call per side with
identical noise (the reference tests' ``injected_noise``) gives the agreement of the two updates.

    # the authors' code and the packages it needs, outside the project (see make_reference.py)
    PYTHONPATH=/path/to/pydeps .venv/bin/python benchmarks/side_by_side.py \\
        --dfc-repo /path/to/deep_feedback_control --strong-repo /path/to/strong_dfc \\
        --threads 1 --repeats 5 --output docs/side_by_side.md
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

RESULT_TAG = "@@SIDE_BY_SIDE@@"
PROCESSES = 1  # our side's processes (--ours-processes)
THREADS = {"theirs": 1, "ours": 1}  # torch threads of each side's calls
BATCH = 128
HIDDEN = [256, 256, 256]  # the papers' MNIST networks (--hidden: smaller, for a quick check)


# ---------------------------------------------------------------------------------------------
# timing and agreement


def timed(fn, setup=None) -> float:
    if setup is not None:
        setup()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def threads(count: int, fn):
    """``fn`` with ``count`` torch threads."""
    import torch

    def call():
        torch.set_num_threads(count)
        return fn()
    return call


def side_by_side(theirs, ours, repeats: int, setup_theirs=None, setup_ours=None) -> tuple[list[float], list[float]]:
    """Warm up both, then ``repeats`` samples of each, alternating."""
    theirs, ours = threads(THREADS["theirs"], theirs), threads(THREADS["ours"], ours)
    timed(theirs, setup_theirs)
    timed(ours, setup_ours)
    t_theirs, t_ours = [], []
    for _ in range(repeats):
        t_theirs.append(timed(theirs, setup_theirs))
        t_ours.append(timed(ours, setup_ours))
    return t_theirs, t_ours


def no_grad(fn):
    """``fn`` without autograd recording (our updates are computed, not back-propagated)."""
    import torch

    def call():
        with torch.no_grad():
            return fn()
    return call


def agreement(ours, theirs) -> float:
    """Worst 1 - cosine over the tensors of two updates (lists of tensors)."""
    from harness import agreement as one

    return max(one(a, b)[0] for a, b in zip(ours, theirs))


def row(code: str, method: str, phase: str, t_theirs: list[float], t_ours: list[float], **extra) -> dict:
    theirs, ours = statistics.median(t_theirs), statistics.median(t_ours)
    return {"code": code, "method": method, "phase": phase, "theirs_s": theirs, "ours_s": ours,
            "ratio": theirs / ours, "theirs_samples": t_theirs, "ours_samples": t_ours, **extra}


def emit(record: dict) -> None:
    print(RESULT_TAG + json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------------------
# our side on two processes (both cores): half a batch each, the updates averaged (gloo), as DDP


class TwoProcesses:
    """Our update on two processes: this one (rank 0) and a helper (rank 1), each computing its
    half of the batch with the module of ``record`` (``build_module``), then one all-reduce: the
    average equals the one-process update of the whole batch (the DDP strategy's arithmetic)."""

    COMMANDS = ("wake", "sleep", "stop")

    def __init__(self, record: dict, names: list[str], x, y, overrides: dict[str, dict]) -> None:
        import torch
        import torch.distributed as dist
        import torch.multiprocessing as mp

        handle, path = tempfile.mkstemp(suffix=".pt")
        os.close(handle)
        torch.save({"record": record, "x": x, "y": y, "names": names, "overrides": overrides}, path)
        port = 29000 + os.getpid() % 1000
        self.process = mp.get_context("spawn").Process(target=_helper, args=(path, port, torch.get_num_threads()))
        self.process.start()
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
        self.modules = _modules(record, names, overrides)
        self.x, self.y = x[: x.shape[0] // 2], y[: y.shape[0] // 2]
        self.names = names

    def call(self, command: str, name: str):
        import torch
        import torch.distributed as dist

        order = torch.tensor([self.COMMANDS.index(command), self.names.index(name)])
        dist.broadcast(order, 0)
        return _half(self.modules[name], command, self.x, self.y)

    def close(self) -> None:
        import torch
        import torch.distributed as dist

        dist.broadcast(torch.tensor([self.COMMANDS.index("stop"), 0]), 0)
        self.process.join()
        dist.destroy_process_group()


def _modules(record: dict, names: list[str], overrides: dict[str, dict]) -> dict:
    from harness import build_module

    return {name: build_module(record, **overrides[name]) for name in names}


def _half(model, command: str, x, y):
    """This rank's half-batch update, averaged over the two ranks (world size 2)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        if command == "wake":
            update = model.dfc_wake_update(x, y, None, world_size=2)
            tensors = update.tensors() + (update.feedback or [])
        else:
            tensors, _ = model.dfc_sleep_update(x, y, pretraining=False)
        flat = torch.cat([t.flatten() for t in tensors])
        dist.all_reduce(flat)
        return flat / 2


def _helper(path: str, port: int, threads: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO / "tests" / "reference"))
    data = torch.load(path, weights_only=False)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
    modules = _modules(data["record"], data["names"], data["overrides"])
    half = data["x"].shape[0] // 2
    x, y = data["x"][half:], data["y"][half:]
    while True:
        order = torch.zeros(2, dtype=torch.int64)
        dist.broadcast(order, 0)
        command = TwoProcesses.COMMANDS[int(order[0])]
        if command == "stop":
            break
        _half(modules[data["names"][int(order[1])]], command, x, y)
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# deep_feedback_control


def run_dfc(repo: Path, repeats: int) -> None:
    import numpy as np
    import torch

    from harness import build_module
    from make_reference import config_dict, injected_noise, inputs, install_shims, near_weight_product

    install_shims(torch)
    sys.path.insert(0, str(repo))
    run_config = importlib.import_module("run_config")
    args_mod = importlib.import_module("utils.args")
    builders = importlib.import_module("utils.builders")
    config = dict(importlib.import_module("configs.configs_mnist.mnist_dfc").config)
    config.update(size_input=784, size_output=10, num_hidden=len(HIDDEN), size_hidden=",".join(map(str, HIDDEN)),
                  out_dir=tempfile.mkdtemp())
    run_config._override_cmd_arg(config)
    args = args_mod.parse_cmd_arguments(argv=sys.argv[1:])
    torch.manual_seed(args.random_seed)
    np.random.seed(args.random_seed)
    net = builders.build_network(args)
    layers = net.layers
    sizes = [layer.weights.shape[0] for layer in layers]
    with torch.no_grad():
        for layer, q in zip(layers, near_weight_product(torch, [layer.weights for layer in layers])):
            layer.feedbackweights.copy_(q)
    record = {"code": "deep_feedback_control", "config": config_dict(args),
              "before": {"W": [l.weights.detach().clone() for l in layers],
                         "b": [l.bias.detach().clone() for l in layers],
                         "Q": [l.feedbackweights.detach().clone() for l in layers]}}
    x, y = mnist_batch(torch, inputs)
    loss_fn = torch.nn.CrossEntropyLoss()
    forward_params = net.get_forward_parameter_list()
    feedback_params = [layer.feedbackweights for layer in layers]

    def zero(params):
        def setup():
            for p in params:
                p.grad = None
        return setup

    def their_wake():
        predictions = net.forward(x)
        if not predictions.requires_grad:
            predictions.requires_grad = True
        net.backward(loss_fn(predictions, y), args.target_stepsize, save_target=False)

    def their_sleep():
        net.forward(x)
        net.compute_feedback_gradients()

    published = build_module(record)
    ours = {"exact": published, "fast": build_module(record, numerics="fast")}
    generator = torch.Generator().manual_seed(0)

    # agreement: the wake pass is noise-free; the sleep pass with identical noise
    zero(forward_params)()
    their_wake()
    theirs_w = [t.grad.clone() for l in layers for t in (l.weights, l.bias)]
    for name, model in ours.items():
        update = model.dfc_wake_update(x, y, generator)
        ours_w = [t for pair in zip(update.weights, update.biases) for t in pair]
        emit({"agreement": ("DFC", "wake", name), "one_minus_cos": agreement(ours_w, theirs_w)})
    zero(feedback_params)()
    net.forward(x)
    with injected_noise(torch, torch.Generator().manual_seed(11), sizes, args.inst_transmission_fb):
        net.compute_feedback_gradients()
    theirs_q = [layer.feedbackweights.grad.clone() for layer in layers]
    ours_q, _ = published.dfc_sleep_update(x, y, pretraining=False, generator=torch.Generator().manual_seed(11))
    emit({"agreement": ("DFC", "sleep", "exact"), "one_minus_cos": agreement(ours_q, theirs_q)})

    pair = TwoProcesses(record, list(ours), x, y, {"exact": {}, "fast": {"numerics": "fast"}}) if PROCESSES == 2 else None
    for name, model in ours.items():
        ours_call = (lambda n=name: pair.call("wake", n)) if pair else no_grad(lambda m=model: m.dfc_wake_update(x, y, generator))
        t_theirs, t_ours = side_by_side(their_wake, ours_call, repeats, setup_theirs=zero(forward_params))
        emit(row("deep_feedback_control", "DFC", "wake", t_theirs, t_ours, ours_settings=name))
    for name in ("exact", "fast"):
        model = ours[name]
        ours_call = (lambda n=name: pair.call("sleep", n)) if pair else no_grad(
            lambda m=model: m.dfc_sleep_update(x, y, False, generator))
        t_theirs, t_ours = side_by_side(their_sleep, ours_call, repeats, setup_theirs=zero(feedback_params))
        emit(row("deep_feedback_control", "DFC", "sleep", t_theirs, t_ours, ours_settings=name))
    if pair:
        pair.close()


# ---------------------------------------------------------------------------------------------
# strong_dfc


def run_strong(repo: Path, repeats: int) -> None:
    import torch

    from harness import build_module
    from make_reference import (STRONG_COMMANDS, config_dict, injected_noise, inputs, install_shims,
                                near_weight_product, soft_labels)

    install_shims(torch)
    sys.path.insert(0, str(repo / "dfc"))
    args_mod = importlib.import_module("utils.args")
    net_utils = importlib.import_module("networks.net_utils")
    loss_fn = importlib.import_module("utils.math_utils").cross_entropy_fn()
    logger = logging.getLogger("side_by_side")
    x, labels = mnist_batch(torch, inputs)

    for command, method in (("strong_dfc", "Strong-DFC single phase"), ("strong_dfc_ss", "Strong-DFC two phases")):
        network_type, text = STRONG_COMMANDS[command]
        argv = text.split() + ["--size_hidden=" + ",".join(map(str, HIDDEN)), f"--out_dir={tempfile.mkdtemp()}/out",
                               "--no_plots"]
        config = args_mod.parse_cmd_arguments(network_type=network_type, argv=argv)
        torch.manual_seed(42)
        net = net_utils.generate_network(config, SimpleNamespace(in_size=784, out_size=10), torch.device("cpu"),
                                         network_type, logger=logger)
        net.loss_function_name = "cross_entropy"  # what train() sets before the forward epochs
        layers = net.layers
        sizes = [layer.weights.shape[0] for layer in layers]
        with torch.no_grad():
            for layer, q in zip(layers, near_weight_product(torch, [layer.weights for layer in layers])):
                layer.weights_backward.copy_(q)
        record = {"code": "strong_dfc", "network_type": network_type, "config": config_dict(config),
                  "before": {"W": [l.weights.detach().clone() for l in layers],
                             "b": [l.bias.detach().clone() for l in layers],
                             "Q": [l.weights_backward.detach().clone() for l in layers]}}
        targets = soft_labels(torch, labels, config.target_class_value)
        models = {"exact": build_module(record), "fast": build_module(record, numerics="fast")}
        model = models["exact"]
        params = [t for p in [*net.forward_params, *net.feedback_params] for t in p]
        generator = torch.Generator().manual_seed(0)

        def zero():
            for t in params:
                t.grad = torch.zeros_like(t)

        def their_wake():
            net.backward(loss_fn(net.forward(x), targets), targets=targets)

        def their_sleep():
            net.compute_feedback_gradients(loss_fn(net.forward(x), targets), targets, init=False)

        # agreement with identical noise
        zero()
        with injected_noise(torch, torch.Generator().manual_seed(11), sizes, config.inst_transmission):
            their_wake()
        theirs = [t.grad.clone() for l in layers for t in (l.weights, l.bias)]
        update = model.dfc_wake_update(x, labels, torch.Generator().manual_seed(11))
        ours = [t for pair in zip(update.weights, update.biases) for t in pair]
        emit({"agreement": (method, "wake", "exact"), "one_minus_cos": agreement(ours, theirs)})
        if network_type == "DFC":  # the noise-free two-phase wake: fast against the authors too
            fast = models["fast"].dfc_wake_update(x, labels, generator)
            emit({"agreement": (method, "wake", "fast"),
                  "one_minus_cos": agreement([t for pair in zip(fast.weights, fast.biases) for t in pair], theirs)})
        if network_type == "DFC":
            zero()
            with injected_noise(torch, torch.Generator().manual_seed(11), sizes, config.inst_transmission_fb):
                their_sleep()
            theirs_q = [layer.weights_backward.grad.clone() for layer in layers]
            ours_q, _ = model.dfc_sleep_update(x, labels, pretraining=False, generator=torch.Generator().manual_seed(11))
            emit({"agreement": (method, "sleep", "exact"), "one_minus_cos": agreement(ours_q, theirs_q)})

        pair = TwoProcesses(record, list(models), x, labels, {"exact": {}, "fast": {"numerics": "fast"}}) \
            if PROCESSES == 2 else None
        for name, m in models.items():
            ours_call = (lambda n=name: pair.call("wake", n)) if pair else no_grad(
                lambda m=m: m.dfc_wake_update(x, labels, generator))
            t_theirs, t_ours = side_by_side(their_wake, ours_call, repeats, setup_theirs=zero)
            emit(row("strong_dfc", method, "wake", t_theirs, t_ours, ours_settings=name))
            if network_type == "DFC":
                ours_call = (lambda n=name: pair.call("sleep", n)) if pair else no_grad(
                    lambda m=m: m.dfc_sleep_update(x, labels, False, generator))
                t_theirs, t_ours = side_by_side(their_sleep, ours_call, repeats, setup_theirs=zero)
                emit(row("strong_dfc", method, "sleep", t_theirs, t_ours, ours_settings=name))
        if pair:
            pair.close()


def mnist_batch(torch, inputs):
    from harness import load_excerpt

    excerpt = load_excerpt()
    return inputs(excerpt["images"][:BATCH], pool=1), excerpt["labels"][:BATCH]


# ---------------------------------------------------------------------------------------------
# the table


EPOCH_SLEEP_PASSES = {"DFC": 3, "Strong-DFC two phases": 1}
# (wake settings, sleep settings) of the epoch-equivalent rows
EPOCH_PAIRS = [("exact", "exact"), ("fast", "fast")]


def table(results: list[dict], threads: int, their_threads: int | None = None, processes: int = 1) -> str:
    rows = [r for r in results if "phase" in r]
    agree = {tuple(r["agreement"]): r for r in results if "agreement" in r}
    lines = [
        f"Per batch (B = {BATCH}, float64 models; the authors: {their_threads or threads} thread(s); ours: "
        f"{processes} process(es) of {threads} thread(s)), median of {len(rows[0]['ours_samples'])} samples "
        "each, alternating the two sides" if rows else "no rows",
        "",
        "| method | phase | ours: numerics | authors (s) | ours (s) | ratio | update 1 - cos vs the authors' |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = agree.get((r["method"], r["phase"], r["ours_settings"]))
        lines.append(f"| {r['method']} | {r['phase']} | {r['ours_settings']} | {r['theirs_s']:.3f} | "
                     f"{r['ours_s']:.4f} | **{r['ratio']:.1f}x** | {a['one_minus_cos']:.1e} |" if a else
                     f"| {r['method']} | {r['phase']} | {r['ours_settings']} | {r['theirs_s']:.3f} | "
                     f"{r['ours_s']:.4f} | **{r['ratio']:.1f}x** | noisy: other draws |")
    lines += ["", "Epoch-equivalent batch (1 wake pass + the sleep passes of one forward epoch, per batch):", "",
              "| method | passes | ours: wake / sleep numerics | authors (s) | ours (s) | ratio |", "|---|---|---|---|---|---|"]
    for method, n_sleep in EPOCH_SLEEP_PASSES.items():
        of = {(r["phase"], r["ours_settings"]): r for r in rows if r["method"] == method}
        for wake_settings, sleep_settings in EPOCH_PAIRS:
            wake, sleep = of.get(("wake", wake_settings)), of.get(("sleep", sleep_settings))
            if wake is not None and sleep is not None:
                theirs = wake["theirs_s"] + n_sleep * sleep["theirs_s"]
                ours = wake["ours_s"] + n_sleep * sleep["ours_s"]
                lines.append(f"| {method} | 1 wake + {n_sleep} sleep | {wake['ours_settings']} / "
                             f"{sleep['ours_settings']} | {theirs:.3f} | {ours:.4f} | **{theirs / ours:.1f}x** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dfc-repo", type=Path, help="checkout of meulemansalex/deep_feedback_control @6208695")
    parser.add_argument("--strong-repo", type=Path, help="checkout of mariacer/strong_dfc @bb0f0a1")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per side and phase")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--hidden", type=int, nargs="+", default=HIDDEN, help="hidden layer sizes (papers: 256 256 256)")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    parser.add_argument("--results", type=Path, help="also write the raw samples here (JSON lines)")
    parser.add_argument("--ours-processes", type=int, choices=[1, 2], default=1,
                        help="our side on 2 processes of half a batch each, the updates averaged (both cores; "
                             "use with --threads 1: each process 1 thread, the authors' side --their-threads)")
    parser.add_argument("--their-threads", type=int, help="the authors' torch threads (default: --threads)")
    parser.add_argument("--child", choices=["dfc", "strong"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    their_threads = args.their_threads or args.threads
    if args.child:
        import torch

        global PROCESSES
        PROCESSES = args.ours_processes
        THREADS.update(theirs=their_threads, ours=args.threads)
        torch.set_num_threads(args.threads)
        os.chdir(tempfile.mkdtemp())  # their code writes logs into the working directory
        HIDDEN[:] = args.hidden
        if args.child == "dfc":
            return run_dfc(args.dfc_repo.resolve(), args.repeats)
        return run_strong(args.strong_repo.resolve(), args.repeats)
    if args.dfc_repo is None and args.strong_repo is None:
        parser.error("give --dfc-repo and/or --strong-repo (checkouts of the authors' code at the pinned commits)")

    from make_reference import check_commit

    results = []
    # one process per code base: both have top-level packages named utils, networks, main
    for child, repo, name in (("dfc", args.dfc_repo, "deep_feedback_control"), ("strong", args.strong_repo, "strong_dfc")):
        if repo is None:
            continue
        check_commit(repo, name)
        command = [sys.executable, __file__, "--child", child, f"--{child}-repo", str(repo),
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--their-threads", str(their_threads),
                   "--ours-processes", str(args.ours_processes), "--hidden", *map(str, args.hidden)]
        most = str(max(args.threads, their_threads))
        env = {**os.environ, "OMP_NUM_THREADS": most, "MKL_NUM_THREADS": most}
        process = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        for line in process.stdout.splitlines():
            if line.startswith(RESULT_TAG):
                results.append(json.loads(line[len(RESULT_TAG):]))
                print(line[len(RESULT_TAG):], flush=True)
    text = table(results, args.threads, their_threads, args.ours_processes)
    text += f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.results:
        args.results.write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
