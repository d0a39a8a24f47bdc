"""Where one wake or sleep pass spends its time: the torch profiler's operator table.

The pass is that of a reference case's published settings (``tests/reference``; e.g. ``dfc_sleep``,
``strong_dfc_wake``, ``strong_dfc_ss_sleep``) on the papers' MNIST network (784-256-256-256-10
tanh, fresh weights, seed 0) and 128 MNIST images, float64, or an example config (``--config``,
e.g. the autoencoder's ``examples/mnist_autoencoder_dfc_fixed.yaml``, with ``--steps`` to shorten
it). ``--numerics`` chooses the preset (``fast``, the default, or ``exact``; the model is float64
either way). Prints the time of one call and the operators by self CPU time.

    python benchmarks/profile_pass.py dfc_sleep sleep --threads 1
    python benchmarks/profile_pass.py strong_dfc_wake wake --numerics exact
    python benchmarks/profile_pass.py --config examples/mnist_autoencoder_dfc_fixed.yaml wake --steps 201
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

from authors import network_settings  # noqa: E402
from harness import load, load_excerpt, settings_of  # noqa: E402
from make_reference import inputs  # noqa: E402

from lightning_dfc import MLP, DFCModule  # noqa: E402
from lightning_dfc.shell.cli import build_cli  # noqa: E402

SIZES = [784, 256, 256, 256, 10]


def model_of(args: argparse.Namespace) -> DFCModule:
    if args.config:
        extra = [f"--model.dynamics.steps={args.steps}"] if args.steps else []
        cli = build_cli(["--config", str(args.config), "--data.data_dir=/nonexistent", "--trainer.logger=false",
                         f"--model.init_args.numerics={args.numerics}", *extra], run=False)
        return cli.model.double()
    record = load(args.case)
    network = {**network_settings(record["config"]), "sizes": SIZES}
    torch.manual_seed(0)
    return DFCModule(MLP(**network), **{**settings_of(record), "numerics": args.numerics}).double()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", nargs="?", help="reference case (tests/reference/<case>.pt)")
    parser.add_argument("phase", choices=["wake", "sleep"])
    parser.add_argument("--config", type=Path, help="an example config instead of a reference case")
    parser.add_argument("--steps", type=int, help="with --config: the wake simulation's time points")
    parser.add_argument("--numerics", choices=["fast", "exact"], default="fast", help="the numerics preset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=12, help="operators shown")
    args = parser.parse_args(argv)
    if (args.case is None) == (args.config is None):
        parser.error("give a reference case or --config")
    torch.set_num_threads(args.threads)
    model = model_of(args)
    excerpt = load_excerpt()
    x = inputs(excerpt["images"][:128], pool=1)
    y = x.clone() if model.dfc_loss == "mse" else excerpt["labels"][:128]

    def call():
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            if args.phase == "wake":
                return model.dfc_wake_update(x, y, generator)
            return model.dfc_sleep_update(x, y, pretraining=False, generator=generator)

    call()  # warm-up
    start = time.perf_counter()
    call()
    print(f"one {args.phase} pass: {time.perf_counter() - start:.3f} s ({args.numerics} numerics, {args.threads} thread(s))")
    with profile() as prof:
        call()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
