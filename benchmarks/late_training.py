"""The fast wake pass against the exact one on a trained checkpoint's training batches.

Late in training (perfectly classified samples, target offsets near 1e-20) the fast numerics'
early stop must still stop, with the exact numerics' update (``docs/numerics.md``, "Late in
training"). For each of the first ``--batches`` training batches (the official order, the data
module's normalisation) it prints the Euler steps and excluded samples of both, and at the end the
worst 1 - cos and relative norm difference over the update tensors.

    python benchmarks/late_training.py --checkpoint RUN/checkpoints/last.ckpt \\
        --config examples/mnist_dfc.yaml --data-dir ../shared/data/full --batches 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

from harness import agreement  # noqa: E402

from lightning_dfc.shell.cli import build_cli  # noqa: E402


def model(config: Path, checkpoint: Path, numerics: str):
    cli = build_cli(["--config", str(config), "--data.data_dir=/nonexistent", "--trainer.logger=false",
                     f"--model.init_args.numerics={numerics}"], run=False)
    module = cli.model.double()
    module.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    return module


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("examples/mnist_dfc.yaml"))
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding MNIST/raw")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from torchvision.datasets import MNIST

    from lightning_dfc.shell.data import MNISTDataModule

    data = MNIST(str(args.data_dir), train=True, download=False)
    images = data.data.double().div(255).sub(MNISTDataModule.mean).div(MNISTDataModule.std).flatten(1)
    fast, exact = model(args.config, args.checkpoint, "fast"), model(args.config, args.checkpoint, "exact")
    worst = {"one_minus_cos": 0.0, "norm": 0.0}
    with torch.no_grad():
        for k in range(args.batches):
            rows = slice(k * args.batch_size, (k + 1) * args.batch_size)
            x, y = images[rows], data.targets[rows]
            a, b = fast.dfc_wake_update(x, y), exact.dfc_wake_update(x, y)
            for ta, tb in zip(a.tensors(), b.tensors(), strict=True):
                one_minus_cos, norm = agreement(ta, tb)
                worst["one_minus_cos"] = max(worst["one_minus_cos"], one_minus_cos)
                worst["norm"] = max(worst["norm"], norm)
            print(f"batch {k}: steps fast {a.stats['steps']:.0f}, exact {b.stats['steps']:.0f}; "
                  f"excluded fast {a.stats['excluded']:.0f}, exact {b.stats['excluded']:.0f}", flush=True)
    print(f"worst 1 - cos {worst['one_minus_cos']:.1e}, worst relative norm difference {worst['norm']:.1e}")
    return worst


if __name__ == "__main__":
    main()
