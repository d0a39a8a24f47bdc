"""Train several example configs on the same data and seeds; write a Markdown table.

Each run is ``fit`` then ``test`` at the checkpoint of best validation metric (as the paper
reports: test value at the epoch of best validation). Example (the offline MNIST subset):

    python benchmarks/compare_methods.py --configs examples/mnist_bp.yaml examples/mnist_dfc.yaml \
        --epochs 5 --seeds 42 --data-dir ../shared/data --val-size 500 --output /tmp/table.md

Extra ``--override`` arguments go to every run's LightningCLI (e.g. ``--override
--model.init_args.feedback.pretrain_epochs=2``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lightning_dfc.cli import build_cli


def run_one(config: Path, seed: int, args: argparse.Namespace, root: Path) -> dict[str, float]:
    overrides = [
        f"--seed_everything={seed}",
        f"--trainer.max_epochs={args.epochs}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.enable_progress_bar=false",
        *(f"--data.init_args.{k}={v}" for k, v in (("data_dir", args.data_dir), ("val_size", args.val_size))
          if v is not None),
        *args.override,
    ]
    cli = build_cli(["--config", str(config), *overrides], run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return {**{k: float(v) for k, v in results.items()}, "fit_seconds": fit_seconds}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--epochs", type=int, default=5, help="forward-weight epochs")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--val-size", type=int, default=None)
    parser.add_argument("--override", nargs="*", default=[], help="extra CLI arguments for every run")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the runs get their arguments explicitly

    rows = []
    for config in args.configs:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as root:
                runs.append(run_one(config, seed, args, Path(root)))
        keys = [k for k in ("test_acc", "test_loss") if k in runs[0]]
        cells = []
        for key in keys:
            values = [r[key] for r in runs]
            if key == "test_acc":
                values = [100 * (1 - v) for v in values]  # test error in %
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean:.4g} ± {std:.2g}")
        minutes = statistics.fmean(r["fit_seconds"] for r in runs) / 60
        rows.append((config.stem, *cells, f"{minutes:.1f}"))
        print(rows[-1], flush=True)

    has_acc = len(rows[0]) == 4
    header = "| config | test error (%) | test loss | fit minutes |" if has_acc else "| config | test loss | fit minutes |"
    sep = "|---" * (header.count("|") - 1) + "|"
    table = "\n".join([header, sep, *("| " + " | ".join(r) + " |" for r in rows)])
    note = f"\n\n{len(args.seeds)} seed(s) {args.seeds}, {args.epochs} forward epochs, data_dir={args.data_dir}\n"
    print(table + note)
    if args.output:
        args.output.write_text(table + note)
    return table


if __name__ == "__main__":
    main()
