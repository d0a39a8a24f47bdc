"""The GPU path, in both numerics: updates on CUDA against the CPU's, and per-batch wake and sleep times.

For each example config (default: the paper's MNIST DFC run and both Strong-DFC runs) and each
numerics preset (``exact``, ``fast``), the model is built through the CLI (float64), its feedback
weights are set near the weight product (as after pre-training; the reference tests' choice),
and one batch of 128 MNIST images (``tests/reference/mnist_excerpt.pt``, no download needed) is
used:

* **Agreement.** ``exact`` on the GPU against ``exact`` on the CPU, wake and sleep: the two
  devices' generators draw different numbers, so for this check the noise of both is drawn on
  the CPU from one seeded generator and moved to the device (``same_noise`` of
  ``tests/reference/harness.py``); equal to rounding. ``fast`` on the GPU against ``exact`` on the
  CPU for the noise-free wake passes (DFC, two-phase Strong-DFC): within the fast numerics'
  bounds (1 - cos <= 1e-5, norm <= 1e-3); its noisy passes draw other numbers (two-point noise,
  checked over seeds in ``tests/core/test_numerics.py``). Printed: worst 1 - cosine and worst relative
  norm error over the update tensors.
* **Time.** Median per-batch time of the wake pass and the sleep pass on the GPU (synchronised),
  the noise drawn on the device, and the time of a full MNIST epoch from them: 430 batches of
  128, each with its wake pass and the config's sleep passes per forward epoch (DFC: 3, one
  before and two after; two-phase Strong-DFC: 1; single phase: none).

    bash benchmarks/gpu.sh                  # = the command below, on a CUDA machine
    python benchmarks/gpu.py --repeats 5 --output gpu_results.md

Without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

from harness import load_excerpt, same_noise  # noqa: E402
from make_reference import inputs, near_weight_product  # noqa: E402

from lightning_dfc.shell.cli import build_cli  # noqa: E402

CONFIGS = ["examples/mnist_dfc.yaml", "examples/mnist_strong_dfc.yaml", "examples/mnist_strong_dfc_ss.yaml"]
BATCH = 128
MNIST_BATCHES = 430  # 55,000 training images / 128


NUMERICS = ("exact", "fast")


def build_model(config: Path, numerics: str = "exact"):
    """The config's model (float64) in these numerics, feedback near the weight product where it
    is trained."""
    args = ["--config", str(config), "--data.data_dir=/nonexistent", "--trainer.logger=false",
            f"--model.init_args.numerics={numerics}"]
    model = build_cli(args, run=False).model.double()
    net = model.dfc_net
    if model.dfc_method.train_feedback:  # fixed feedback keeps its own (weight product)
        with torch.no_grad():
            weights = [layer.weight.detach() for layer in net.layers]
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)  # the helper's identity matrix
            try:
                near = near_weight_product(torch, weights)
            finally:
                torch.set_default_dtype(default)
            for q, ref in zip(net.feedback, near):
                q.copy_(ref)
    return model


def batch(device: torch.device, size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    excerpt = load_excerpt()
    x = inputs(excerpt["images"][:size], pool=1)
    return x.to(device), excerpt["labels"][:size].to(device)


def wake(model, x, y, seed=0):
    generator = torch.Generator(device=x.device).manual_seed(seed)
    update = model.dfc_wake_update(x, y, generator)
    return [t for pair in zip(update.weights, update.biases) for t in pair]


def sleep(model, x, y, seed=0):
    generator = torch.Generator(device=x.device).manual_seed(seed)
    grads, _ = model.dfc_sleep_update(x, y, pretraining=False, generator=generator)
    return grads


def compare(gpu: list[torch.Tensor], cpu: list[torch.Tensor]) -> tuple[float, float]:
    worst_cos, worst_norm = 0.0, 0.0
    for a, b in zip(gpu, cpu):
        a = a.cpu()
        cos = float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))
        worst_cos = max(worst_cos, 1 - cos)
        worst_norm = max(worst_norm, abs(float(a.norm() / b.norm()) - 1))
    return worst_cos, worst_norm


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up (CUDA context, kernels, allocator)
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def sleep_passes(model) -> int:
    if model.dfc_method.single_phase or not model.dfc_method.train_feedback:
        return 0
    cfg = model.dfc_feedback_config
    return cfg.sleep_before + cfg.sleep_after


def run_config(config: Path, repeats: int, device: torch.device, batch_size: int = BATCH) -> list[str]:
    lines = []
    with torch.no_grad():
        x_cpu, y_cpu = batch(torch.device("cpu"), batch_size)
        x, y = x_cpu.to(device), y_cpu.to(device)
        reference, models = {}, {}
        for numerics in NUMERICS:
            models[numerics] = model = build_model(config, numerics)
            n_sleep = sleep_passes(model)
            phases = [("wake", wake)] + ([("sleep", sleep)] if n_sleep else [])
            if numerics == "exact":
                for phase, fn in phases:
                    with same_noise(11):
                        reference[phase] = fn(model, x_cpu, y_cpu)
            model.to(device)
            for phase, fn in phases:
                noisy = (model.dfc_dynamics if phase == "wake" else model.dfc_feedback_config.simulation).noisy
                if numerics == "fast" and noisy:
                    continue  # other draws: compared over seeds in tests/core/test_numerics.py
                with same_noise(11):
                    cos, norm = compare(fn(model, x, y), reference[phase])
                what = "equal to the CPU's exact (same noise)" if numerics == "exact" else "against the CPU's exact"
                lines.append(f"| {config.stem} | {numerics} | {phase} | {what} | 1 - cos {cos:.1e}, norm error {norm:.1e} |")
            # time, drawing the noise on the device
            t_wake = statistics.median(timed(lambda: wake(model, x, y), repeats, device))
            lines.append(f"| {config.stem} | {numerics} | wake | median time | {t_wake * 1e3:.1f} ms per batch |")
            t_sleep = 0.0
            if n_sleep:
                t_sleep = statistics.median(timed(lambda: sleep(model, x, y), repeats, device))
                lines.append(f"| {config.stem} | {numerics} | sleep | median time | {t_sleep * 1e3:.1f} ms per batch |")
            epoch = MNIST_BATCHES * (t_wake + n_sleep * t_sleep)
            lines.append(f"| {config.stem} | {numerics} | epoch | {MNIST_BATCHES} x (wake + {n_sleep} sleep), batch "
                         f"{batch_size} | **{epoch:.1f} s** |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="example configs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per phase")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    parser.add_argument("--batch-size", type=int, default=BATCH, help="images per batch (MNIST runs: 128)")
    parser.add_argument("--device", default="cuda",
                        help="the device compared with the CPU (default cuda; 'cpu' runs the script "
                             "without a GPU, as a check of the script itself)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine")
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (--device cpu)"
    header = [f"GPU: {name}, torch {torch.__version__}, CPU reference: "
              f"{platform.processor() or platform.machine()}, float64, batch {args.batch_size}", "",
              "| config | numerics | phase | what | result |", "|---|---|---|---|---|"]
    print("\n".join(header), flush=True)
    lines = list(header)
    for config in args.configs:
        for line in run_config(REPO / config, args.repeats, device, args.batch_size):
            print(line, flush=True)
            lines.append(line)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
