"""Real epochs on the complete MNIST, timed by running them: the feedback pre-training, then one
wake epoch with its sleep epochs.

Each run is ``lightning-dfc fit`` of an example config (its published hyperparameters) on the
complete MNIST (55,000 training images, 5,000 validation, as the papers split it) for one wake
epoch, with the module's own phase clock (``shell/summary.py``: wall time of each phase's
training batches) and the wall time of the whole fit. ``--limit F`` trains every epoch on the
first fraction F of its batches (a slice of an epoch, e.g. 0.1 for the exact numerics, whose
full epoch takes about 20 minutes here); the times are then those of the slice, not scaled.
``--devices 2`` runs two processes (DDP, gloo) of half a batch each, so that the global batch
stays the config's (each process: batch_size / 2).

One JSON line per run goes to ``--results``.

    python benchmarks/full_epoch.py --config examples/mnist_dfc.yaml --data-dir ../shared/data/full
    python benchmarks/full_epoch.py --config examples/mnist_strong_dfc.yaml --data-dir ../shared/data/full
    python benchmarks/full_epoch.py --config examples/mnist_dfc.yaml --data-dir ../shared/data/full \\
        --numerics exact --limit 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace) -> dict:
    from lightning.pytorch.callbacks import Callback

    from lightning_dfc.shell.cli import build_cli

    batch_size = args.batch_size // args.devices
    argv = ["--config", str(args.config), f"--data.data_dir={args.data_dir}", "--data.download=false",
            f"--data.val_size={args.val_size}", f"--data.batch_size={batch_size}", "--trainer.max_epochs=1",
            "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            f"--model.init_args.numerics={args.numerics}", f"--trainer.default_root_dir={tempfile.mkdtemp()}"]
    if args.devices > 1:
        argv += [f"--trainer.devices={args.devices}", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"]
    if args.limit is not None:
        argv += [f"--trainer.limit_train_batches={args.limit}"]
    argv += ["--trainer.callbacks=[]"]
    cli = build_cli(argv, run=False)

    class EpochTimes(Callback):
        """Wall time of every epoch (training and validation), by phase."""

        def __init__(self) -> None:
            self.epochs: list[tuple[str, float]] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation, if any
            phase = pl_module.dfc_phase.phase.name.lower()
            self.epochs.append((phase, time.perf_counter() - self.start))

    times = EpochTimes()
    cli.trainer.callbacks.append(times)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    fit = time.perf_counter() - start
    model = cli.model
    clock = model._dfc_clock
    epoch_phases = [(p, s) for p, s in times.epochs if p != "pretrain"]
    return {
        "config": str(args.config.relative_to(REPO)) if args.config.is_relative_to(REPO) else str(args.config),
        "numerics": args.numerics, "devices": args.devices, "threads": torch.get_num_threads(),
        "limit": args.limit, "batch_size_per_process": batch_size,
        "train_batches_per_epoch": cli.trainer.num_training_batches,
        "phase_seconds": dict(clock.seconds), "phase_epochs": dict(clock.epochs),
        "pretrain_epoch_seconds": sum(s for p, s in times.epochs if p == "pretrain"),
        "epoch_with_sleep_seconds": sum(s for _, s in epoch_phases), "epoch_phases": epoch_phases,
        "fit_seconds": fit, "val_acc": float(cli.trainer.callback_metrics.get("val_acc", float("nan"))),
        "condition_2": model._dfc_pretrain_condition_2,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="an example config")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding MNIST/raw (the complete MNIST)")
    parser.add_argument("--numerics", choices=["fast", "exact"], default="fast")
    parser.add_argument("--limit", type=float, help="train on this fraction of every epoch's batches (a slice)")
    parser.add_argument("--devices", type=int, default=1, help="DDP processes (half a batch each for 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--results", type=Path, help="append the JSON record here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.config = args.config.resolve()
    record = run(args)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(json.dumps(record), flush=True)
        if args.results:
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
