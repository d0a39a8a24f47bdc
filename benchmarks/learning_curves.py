"""Learning curves and test results of BP, DFA, DFC and Strong-DFC side by side on the offline
MNIST subset or the complete MNIST: one benchmark, the same data and seeds for every row.

Rows (``--rows``; each is ``examples/mnist_<row>.yaml`` plus ``benchmarks/subset/mnist_<row>.yaml``):

    bp             BP                                   (classification, default)
    dfa            DFA                                  (classification, default)
    dfc            DFC (trained feedback)               (classification, default)
    dfc_fixed      DFC (fixed feedback)                 (classification, default)
    strong_dfc     Strong-DFC, single phase, noise      (classification, default)
    strong_dfc_ss  Strong-DFC, two phases, no noise     (classification, default)
    dfc_noise      DFC with noise in the wake dynamics  (classification, default)
    dfc_noisy_dynamics
                   DFC with noise, the second reading: strong_dfc's DFC command with
                   --noisy_dynamics (classification; --scale full default)
    dfc_ss, dfc_ssa, dfc_ss_fixed, dfc_ssa_fixed
                   DFC-SS and DFC-SSA, trained and fixed feedback (classification; --scale full default)
    autoencoder_bp, autoencoder_dfa, autoencoder_dfc, autoencoder_dfc_fixed
                   the 784-256-32-256-784 autoencoder (metric: loss; only when asked for)

``--rows all`` runs all sixteen.

Full scale (``--scale full``, issue 21): the complete MNIST (``--data-dir`` default
``../shared/data/full``: 60,000 training images, the example configs' seeded split into 55,000 /
5,000 as the papers, test on all 10,000), each row's example config as it is (the published
hyperparameters and pre-training, no subset override), default rows both papers' MNIST rows, the
most important first (``FULL_ROWS``). It needs ``--keep-runs DIR`` outside the repository, which
makes every run resumable (also at the subset scale):

* the CSV logger writes version 0, and a run whose folder holds ``last.ckpt`` continues from it
  (``fit(ckpt_path=...)``; the earlier process's ``metrics.csv`` is kept as ``metrics_part<k>.csv``
  and merged, its phase times added). A resumed run continues with fresh random streams, so it is
  not bit-identical to an uninterrupted one;
* after each wake epoch (its validation done) the run appends a ``running`` record to
  ``--results``: ``wake_epoch``, ``val_acc``, ``val_loss``, the phase times so far, ``segment``
  (the process); a stopped benchmark loses at most the epoch in progress, and the report lists
  the runs in progress with their curves so far;
* ``--stop-after SECONDS`` stops each run at the first wake-epoch end after that time and starts
  no new run; ``--resume`` continues them::

    nice -n 10 .venv/bin/python benchmarks/learning_curves.py --scale full --epochs 20 --seeds 42 \\
        --jobs 2 --keep-runs ../runs/full_mnist --results docs/full_mnist.jsonl --stop-after 3600 \\
        --output docs/full_mnist.md --figure docs/figures/full_mnist.png
    # later: the same command with --resume

Data: the offline subset in ``../shared/data`` (6,000 training images in torchvision's MNIST layout,
the full 10,000 test images), split by the data module's seeded ``random_split`` (split_seed 42,
the same for every row and seed) into 5,000 training and 1,000 validation images; test on all
10,000. Each run composes ``--config examples/X.yaml --config benchmarks/subset/X.yaml`` (the second
overrides the first: ``val_size`` 1000, and the feedback pre-training epochs rescaled to the paper's
number of pre-training *updates*: 430 batches per full-MNIST epoch, 40 here, so ``pretrain_epochs``
10 -> 108, 1 -> 11, 15 -> 161; the files' headers say where each value comes from), then the run's
flags: seed, output folders, ``--trainer.max_epochs`` = ``--epochs`` forward-weight (wake) epochs,
``download=false``, and ``--override`` last.

Per run, one JSON line is appended to ``--results`` as soon as it finishes:

* ``curve_val_acc`` / ``curve_val_loss``: validation accuracy / loss indexed by wake epoch
  ``0..E``: ``[0]`` is the untrained network (computed before ``fit``, cheap), ``[k]`` the
  validation after wake epoch ``k`` (from the CSV logger's ``metrics.csv`` rows with phase = wake;
  validation after sleep epochs repeats it, W did not change: ``sleep_val_changed`` lists the
  Lightning epochs where it changed anyway, which should be none); ``curve_train_loss``,
  ``curve_train_acc`` likewise (``[0]`` = None); ``wake_stats``: the wake simulation per wake
  epoch (Euler steps, non-converged, excluded and diverged samples per batch, clipped tensors);
* ``test_acc``, ``test_loss``, ``test_error`` (%) at the best-validation checkpoint (the config's
  ``ModelCheckpoint``: highest ``val_acc``, autoencoder lowest ``val_loss``), ``best_score``,
  ``best_wake_epoch`` (wake epochs trained at that checkpoint; 0 = untrained);
* ``seconds``: wall time per phase (``pretrain``, ``sleep``, ``wake``: training batches only;
  ``validation``; ``other``: diagnostics, checkpoints, Lightning; ``fit``; ``test``);
* ``num_train``, ``num_val``, ``num_test``, ``batches_per_epoch``, the schedule
  (``pretrain_epochs``, ``sleep_before``, ``sleep_after``; ``paper_pretrain_epochs`` from the
  example), the settings (``epochs``, ``config_sha``, ``override``, ``diagnostic_metrics``),
  ``machine``;
* ``status``: ``ok`` or ``failed`` with a ``reason`` (an exception such as diverging dynamics, a
  non-finite validation loss, a worker process that died); the curves up to the failure are kept.
  ``--resume`` skips failed runs too (they would fail the same way), except ``interrupted`` ones
  (a worker that was killed or interrupted), which it runs again.

With ``--diagnostics``, a :class:`lightning_dfc.shell.callbacks.ConditionMonitor` measures the DFC-family
rows (not BP, DFA) at the end of every wake epoch on its last batch (``max_samples`` 16):
Condition 2, the control loss H and Condition 2 at the controlled steady state (``h``), the angles
of the applied update with BP, damped Gauss-Newton and dH/dW, and of Q with J^T and J's damped
pseudo-inverse; ``diagnostics`` in the record holds them per wake epoch. Off by default (cost).

Outputs (printed, and written to ``--output``, Markdown): test error at best validation (mean ± std
over seeds) and best validation accuracy beside the published numbers, the validation curve per
wake epoch, wall time per phase, and the diagnostics when recorded; ``--figure``: the validation
curves, mean over seeds with a min-max band. ``--table-only`` remakes all of them from the file.

Runs: ``--jobs N`` runs N at once, each in its own worker process (``python learning_curves.py
--worker SPEC``) with ``--threads`` torch threads (default 1). The workers inherit the parent's
niceness, so ``nice -n 10 python benchmarks/learning_curves.py ...`` nices every run, and each
worker's pid is printed for ``renice``. ``--jobs 0`` runs in this process (tests, debugging).
An interrupted benchmark continues with ``--resume`` (finished (row, seed) pairs with the same
settings are skipped; other settings are refused).

Full benchmark (all 7 rows, 15 wake epochs, 3 seeds, 2 runs at once on this 2-core machine; the
diagnostics cost about 1 s per wake epoch and leave the training unchanged: the same curves with and
without them)::

    nice -n 10 .venv/bin/python benchmarks/learning_curves.py --seeds 42 43 44 --epochs 15 \\
        --jobs 2 --diagnostics --results docs/learning_curves.jsonl \\
        --output docs/learning_curves.md --figure docs/figures/learning_curves.png
    # continue after an interruption: the same command with --resume
    # the tables and figure again, from the file:
    .venv/bin/python benchmarks/learning_curves.py --table-only --results docs/learning_curves.jsonl \\
        --output docs/learning_curves.md --figure docs/figures/learning_curves.png

Smoke version (about 15 s for BP and DFA, one wake epoch; then one DFC row, about 45 s, with a
50-step wake simulation, one pre-training epoch and the diagnostics; with 50 steps nothing meets
the convergence test, so non-converged samples must be kept or nothing is learned)::

    .venv/bin/python benchmarks/learning_curves.py --rows bp dfa --epochs 1 --seeds 42 --jobs 1 \\
        --results /tmp/lc_smoke.jsonl --output /tmp/lc_smoke.md --figure /tmp/lc_smoke.png
    .venv/bin/python benchmarks/learning_curves.py --rows dfc --epochs 1 --seeds 42 --jobs 1 \\
        --diagnostics --results /tmp/lc_smoke_dfc.jsonl --output /tmp/lc_smoke_dfc.md \\
        --override --model.init_args.dynamics.steps=50 --model.init_args.feedback.pretrain_epochs=1 \\
        --model.init_args.updates.exclude_non_converged=false

Options:
    --rows           rows to run (default: the 7 classification rows; ``all``: also the autoencoder)
    --seeds          seed_everything values (default 42; --table-only: every seed in the file)
    --epochs         forward-weight (wake) epochs (default 15)
    --jobs           runs at once, each in a worker process (default 1; 0: in this process)
    --threads        torch threads per run (default 1)
    --data-dir       folder holding MNIST/raw (default ../shared/data beside the repository)
    --examples       folder of the example configs (default examples/)
    --subset-dir     folder of the override configs (default benchmarks/subset/)
    --diagnostics    ConditionMonitor on the DFC-family rows; --diagnostic-metrics,
                     --diagnostic-samples choose what and on how many samples
    --keep-runs      keep every run's Lightning logs and checkpoints in DIR/<row>_seed<seed>/
    --results        JSON-lines file of finished runs (default OUTPUT.jsonl, else
                     learning_curves.jsonl); --resume, --table-only
    --output         write the Markdown here; --figure PATH.png: the curves
    --override       extra LightningCLI arguments for every run (must come last)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import (  # noqa: E402  (the shared module lives beside this script)
    DFC_TABLE1,
    REPO,
    UsageError,
    append_result,
    check_results_file,
    check_same_settings,
    cli_args,
    finished_runs,
    fit_and_test,
    fmt_mean_std,
    machine,
    machine_text,
    markdown,
    read_results,
    torch_load_epoch,
    utc_now,
)

PREFIX = "[learning_curves]"
PAPER_BATCHES = math.ceil(55_000 / 128)  # 430: batches per epoch of the paper's full MNIST at batch size 128
DEFAULT_EPOCHS = 15
DEFAULT_DATA = REPO.parent / "shared" / "data"
DIAGNOSTIC_METRICS = ("condition_2", "h", "bp", "gn", "feedback")


class Row(NamedTuple):
    label: str
    autoencoder: bool = False
    dfc_family: bool = True  # has a controller: ConditionMonitor's conditions and angles apply

    def stem(self, key: str) -> str:
        return f"mnist_{key}"


ROWS: dict[str, Row] = {
    "bp": Row("BP", dfc_family=False),
    "dfa": Row("DFA", dfc_family=False),
    "dfc": Row("DFC"),
    "dfc_fixed": Row("DFC (fixed)"),
    "strong_dfc": Row("Strong-DFC (single phase, noise)"),
    "strong_dfc_ss": Row("Strong-DFC (two phases, no noise)"),
    "dfc_noise": Row("DFC (noise)"),
    "dfc_noisy_dynamics": Row("DFC (noise, strong_dfc's command)"),
    "dfc_ss": Row("DFC-SS"),
    "dfc_ssa": Row("DFC-SSA"),
    "dfc_ss_fixed": Row("DFC-SS (fixed)"),
    "dfc_ssa_fixed": Row("DFC-SSA (fixed)"),
    "autoencoder_bp": Row("Autoencoder BP", autoencoder=True, dfc_family=False),
    "autoencoder_dfa": Row("Autoencoder DFA", autoencoder=True, dfc_family=False),
    "autoencoder_dfc": Row("Autoencoder DFC", autoencoder=True),
    "autoencoder_dfc_fixed": Row("Autoencoder DFC (fixed)", autoencoder=True),
}
DEFAULT_ROWS = ["bp", "dfa", "dfc", "dfc_fixed", "strong_dfc", "strong_dfc_ss", "dfc_noise"]
# --scale full: both papers' MNIST rows, the most important first (a stopped benchmark has them)
FULL_ROWS = ["bp", "dfc", "strong_dfc", "strong_dfc_ss", "dfc_noise", "dfc_noisy_dynamics", "dfa", "dfc_fixed", "dfc_ss", "dfc_ssa",
             "dfc_ss_fixed", "dfc_ssa_fixed"]
SCALES = ("subset", "full")

# Published MNIST test error in % (autoencoder: test loss), per row and source. "table1": the DFC
# paper's Table 1 (Meulemans et al., NeurIPS 2021; 100 epochs, autoencoder 25; 5 seeds).
# "strong": the Strong-DFC paper's slides (Meulemans et al., ICML 2022; 40 epochs): BP, Strong-DFC
# (noise) = our single-phase row, Strong-DFC (no noise) = our two-phase row (noise-free wake), DFC
# (no noise) = our DFC row, DFC (noise) = our DFC (noise) row. "readme": one run of the authors'
# code (mariacer/strong_dfc dfc/EXPERIMENTS.rst), test accuracy in %. Full MNIST (55,000 train).
PUBLISHED: dict[str, dict[str, Any]] = {
    "bp": {"table1": DFC_TABLE1[("mnist", "bp")], "strong": (1.83, 0.11), "readme": 98.17},
    "dfa": {"table1": DFC_TABLE1[("mnist", "dfa")]},
    "dfc": {"table1": DFC_TABLE1[("mnist", "dfc")], "strong": (2.09, 0.10), "readme": 97.80},
    "dfc_fixed": {"table1": DFC_TABLE1[("mnist", "dfc_fixed")]},
    "strong_dfc": {"strong": (2.19, 0.05), "readme": 97.72},
    "strong_dfc_ss": {"strong": (1.98, 0.05), "readme": 97.75},
    "dfc_noise": {"strong": (15.15, 0.44)},
    "dfc_noisy_dynamics": {"strong": (15.15, 0.44)},
    # DFC-SS, DFC-SSA and the fixed variants: in the DFC paper's Table 1, but its numbers are not in
    # the sources we hold (shared/reference/dfc_reference.md section 7)
    "autoencoder_bp": {"table1": DFC_TABLE1[("mnist_autoencoder", "bp")]},
    "autoencoder_dfa": {"table1": DFC_TABLE1[("mnist_autoencoder", "dfa")]},
    "autoencoder_dfc": {"table1": DFC_TABLE1[("mnist_autoencoder", "dfc")]},
    "autoencoder_dfc_fixed": {"table1": DFC_TABLE1[("mnist_autoencoder", "dfc_fixed")]},
}


def subset_pretrain_epochs(paper_epochs: int, batches_here: int, batch_size: int = 128) -> int:
    """Pre-training epochs here that give the paper's number of pre-training updates (its epochs
    of 55,000 images in batches of ``batch_size``)."""
    return round(paper_epochs * math.ceil(55_000 / batch_size) / batches_here)


# ------------------------------------------------------------------------------------ options
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learning_curves.py", description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (benchmarks/learning_curves.py) for the records and examples.",
    )
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help=f"any of: {' '.join(ROWS)}, or all (default: {' '.join(DEFAULT_ROWS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seed_everything values (default 42; --table-only: all in the file)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="wake epochs (default 15)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once in worker processes (0: in this one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--scale", choices=SCALES, default="subset",
                        help="subset: the offline subset with benchmarks/subset/ overrides (default); full: the "
                             "complete MNIST, the example configs as they are (needs --keep-runs)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding MNIST/raw (default: ../shared/data, --scale full: ../shared/data/full)")
    parser.add_argument("--examples", type=Path, default=REPO / "examples", help="folder of the example configs")
    parser.add_argument("--subset-dir", type=Path, default=REPO / "benchmarks" / "subset",
                        help="folder of the subset override configs")
    parser.add_argument("--diagnostics", action="store_true", help="ConditionMonitor on the DFC-family rows")
    parser.add_argument("--diagnostic-metrics", nargs="+", default=list(DIAGNOSTIC_METRICS), metavar="METRIC",
                        help=f"ConditionMonitor metrics (default: {' '.join(DIAGNOSTIC_METRICS)})")
    parser.add_argument("--diagnostic-samples", type=int, default=16, help="ConditionMonitor max_samples")
    parser.add_argument("--keep-runs", type=Path, default=None,
                        help="keep the runs' logs and checkpoints here; a run with a checkpoint there resumes from it")
    parser.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                        help="with --keep-runs: stop each run at the first wake-epoch end after this many seconds "
                             "(resumable), and start no new runs")
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[],
                        help="extra LightningCLI arguments for every run (must come last)")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON-lines file of runs (default: OUTPUT.jsonl, else learning_curves.jsonl)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--figure", type=Path, default=None, help="write the curves' figure here (.png)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip runs already in --results")
    mode.add_argument("--table-only", action="store_true", help="only make the outputs from --results")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.rows is not None:
            rows = list(ROWS) if args.rows == ["all"] else args.rows
            bad = [r for r in rows if r not in ROWS]
            if bad:
                raise UsageError(f"--rows: unknown {', '.join(map(repr, bad))}; choose from {' '.join(ROWS)} or all")
            if len(set(rows)) != len(rows):
                raise UsageError(f"--rows: repeated entries in {rows}")
            args.rows = rows
        if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
            raise UsageError(f"--seeds: repeated seeds in {args.seeds}")
        for name in ("epochs", "threads", "diagnostic_samples"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
        if args.jobs < 0:
            raise UsageError(f"--jobs must be >= 0 (0: in this process), got {args.jobs}")
        from_monitor = {"condition_1", "condition_2", "condition_3", "stability", "bp", "gn", "mn", "ssa",
                        "feedback", "h"}
        bad = [m for m in args.diagnostic_metrics if m not in from_monitor]
        if bad:
            raise UsageError(f"--diagnostic-metrics: unknown {bad}; ConditionMonitor has {sorted(from_monitor)}")
        if args.figure is not None and args.figure.suffix.lower() != ".png":
            raise UsageError(f"--figure must name a .png file, got {str(args.figure)!r}")
        if args.results is None:
            args.results = args.output.with_suffix(".jsonl") if args.output else Path("learning_curves.jsonl")
        check_results_file(args.results, args.resume, args.table_only)
        if args.data_dir is None:
            args.data_dir = DEFAULT_DATA / "full" if args.scale == "full" else DEFAULT_DATA
        if args.scale == "full" and args.keep_runs is None and not args.table_only:
            raise UsageError("--scale full needs --keep-runs DIR (outside the repository): the runs' checkpoints "
                             "there make them resumable at epoch boundaries")
        if args.stop_after is not None and (args.keep_runs is None or args.stop_after < 0):
            raise UsageError("--stop-after needs --keep-runs (the stopped runs resume from their checkpoints there) "
                             f"and a number of seconds >= 0, got {args.stop_after}")
        args.deadline = None if args.stop_after is None else time.time() + args.stop_after
        if args.rows is None and not args.table_only:
            args.rows = FULL_ROWS if args.scale == "full" else DEFAULT_ROWS
        if not args.table_only:
            if not args.data_dir.is_dir():
                raise UsageError(f"--data-dir {str(args.data_dir)!r} is not a folder")
            for row in args.rows:
                for path in config_paths(args, row):
                    if not path.is_file():
                        raise UsageError(f"row {row}: no config {path}")
    except UsageError as err:
        parser.error(str(err))
    return args


# ------------------------------------------------------------------------------------ plan
def config_paths(args: argparse.Namespace, row: str) -> list[Path]:
    """The example config, and at the subset scale its override (benchmarks/subset/)."""
    stem = ROWS[row].stem(row)
    example = (args.examples / f"{stem}.yaml").resolve()
    return [example] if args.scale == "full" else [example, (args.subset_dir / f"{stem}.yaml").resolve()]


def config_sha(paths: Sequence[Path]) -> str:
    """What the configs say, so that --resume never mixes runs of changed configs."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def settings(args: argparse.Namespace, row: str) -> dict[str, Any]:
    """What makes two runs of the same (row, seed) comparable."""
    diagnostics = list(args.diagnostic_metrics) + [f"max_samples={args.diagnostic_samples}"] \
        if args.diagnostics and ROWS[row].dfc_family else None
    out = {"epochs": args.epochs, "config_sha": config_sha(config_paths(args, row)),
           "override": list(args.override), "diagnostic_metrics": diagnostics}
    return {**out, "scale": "full"} if args.scale == "full" else out  # (older subset records have no scale)


def last_checkpoint(root: Path, row: str) -> Path | None:
    """A resumable run's last checkpoint (the CSV logger's fixed version 0), if it has one."""
    path = root / row / "version_0" / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def paper_batch_size(example: Path) -> int:
    """The example's batch size: that of the published run, whose epochs its pre-training counts."""
    import yaml

    return int(yaml.safe_load(example.read_text())["data"]["init_args"].get("batch_size", 128))


def paper_pretrain_epochs(example: Path) -> int | None:
    """The example's feedback pre-training epochs (None: no trained feedback)."""
    import yaml

    init = yaml.safe_load(example.read_text())["model"]["init_args"]
    if init.get("variant") in ("bp", "dfa") or str(init.get("variant", "")).endswith("_fixed"):
        return None
    return (init.get("feedback") or {}).get("pretrain_epochs", 10)


# The records' checks read the validation after pre-training and sleep epochs too (the untrained
# network's, and ``sleep_val_changed``): the runs ask for it (the library's default skips it).
VALIDATE_EVERY_EPOCH = ["--model.init_args.feedback.validate=true"]


def run_spec(args: argparse.Namespace, row: str, seed: int, root: Path) -> dict[str, Any]:
    """Everything a run needs (a worker process gets it as a JSON file)."""
    configs = config_paths(args, row)
    data = {"data_dir": args.data_dir.resolve()}
    resumable = args.keep_runs is not None  # one logger version, so that a resumed run continues its metrics.csv
    resume = last_checkpoint(root, row) if resumable else None
    return {
        "row": row, "seed": seed, "config": configs[0].name, "root": str(root),
        "cli_args": cli_args(configs, seed=seed, root=root, epochs=args.epochs, data=data, download=False,
                             logger_name=row, override=[*(["--trainer.logger.init_args.version=0"] if resumable
                                                          else []), *VALIDATE_EVERY_EPOCH, *args.override]),
        "resume_from": None if resume is None else str(resume),
        "deadline": args.deadline,
        "progress": str(args.results.resolve()) if resumable else None,
        "settings": settings(args, row), "threads": args.threads,
        "diagnostics": settings(args, row)["diagnostic_metrics"] and list(args.diagnostic_metrics),
        "diagnostic_samples": args.diagnostic_samples,
        "paper_pretrain_epochs": paper_pretrain_epochs(configs[0]),
        "paper_batch_size": paper_batch_size(configs[0]),
        "result": str(root / "record.json"),
    }


# ------------------------------------------------------------------------------------ one run
def _phase_timer():
    """A callback adding up wall time per phase (training batches only) and validation."""
    from lightning.pytorch.callbacks import Callback

    class PhaseTimer(Callback):
        def __init__(self) -> None:
            self.seconds = {"pretrain": 0.0, "sleep": 0.0, "wake": 0.0, "validation": 0.0}
            self._epoch = self._val = 0.0
            self._in_epoch = 0.0
            self._phase = "wake"

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._phase = pl_module.dfc_phase.phase.value
            self._in_epoch = 0.0
            self._epoch = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._val = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            seconds = time.perf_counter() - self._val
            self.seconds["validation"] += seconds
            self._in_epoch += seconds

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds[self._phase] += time.perf_counter() - self._epoch - self._in_epoch

    return PhaseTimer()


def _wake_epoch_progress(results: str, base: dict[str, Any], schedule, timer, segment: int, deadline: float | None):
    """A callback appending one ``running`` record to ``results`` at the end of each wake epoch
    (after its validation): what a stopped benchmark keeps of a run in progress. Past ``deadline``
    (``time.time()``) it stops the run there (``stopped``), to be resumed from its checkpoint."""
    from lightning.pytorch.callbacks import Callback

    from lightning_dfc.core.schedule import Phase

    class WakeEpochProgress(Callback):
        stopped, last_epoch = False, None

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if schedule(trainer.current_epoch).phase is not Phase.WAKE:
                return
            metrics, self.last_epoch = trainer.callback_metrics, int(trainer.current_epoch)
            append_result(Path(results), {
                **base, "status": "running", "segment": segment, "lightning_epoch": int(trainer.current_epoch),
                "wake_epoch": sum(schedule(e).phase is Phase.WAKE for e in range(trainer.current_epoch + 1)),
                **{k: float(metrics[k]) for k in ("val_acc", "val_loss") if k in metrics},
                "seconds": dict(timer.seconds), "finished": utc_now()})
            if deadline is not None and time.time() >= deadline and trainer.current_epoch + 1 < trainer.max_epochs:
                trainer.should_stop = self.stopped = True  # the checkpoint of this epoch is saved after this hook

    return WakeEpochProgress()


def _earlier_seconds(root: Path, segment: int) -> dict[str, float]:
    """The phase times of a resumed run's earlier segments (each process's last snapshot)."""
    total: dict[str, float] = {}
    for k in range(segment):
        path = root / f"segment_{k}.json"
        if path.is_file():
            for key, value in json.loads(path.read_text()).items():
                total[key] = total.get(key, 0.0) + value
    return total


def initial_validation(model, datamodule, precision: str) -> dict[str, float | None]:
    """Validation loss and accuracy of the untrained network, as the validation step computes them
    (mean of the batch-mean losses; micro accuracy), in the trainer's precision. Leaves the model and
    the global random state alone."""
    import copy

    import torch

    from lightning_dfc.core.losses import loss_value

    dtype = torch.float64 if str(precision).startswith("64") else torch.float32
    network = copy.deepcopy(model.network).to(device="cpu", dtype=dtype)
    losses, correct, count = [], 0, 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for x, y in datamodule.val_dataloader():
            out = network(x.to(dtype))
            losses.append(float(loss_value(out, y.to(dtype) if y.is_floating_point() else y, model.dfc_loss)))
            if model.dfc_loss == "cross_entropy":
                correct += int((out.argmax(1) == y).sum())
                count += len(y)
    return {"val_loss": statistics.fmean(losses), "val_acc": correct / count if count else None}


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """metrics.csv merged per Lightning epoch: {epoch: {column: value}} (empty cells left out)."""
    import csv

    epochs: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return epochs
    with path.open(newline="") as f:
        for line in csv.DictReader(f):
            if not line.get("epoch"):
                continue
            merged = epochs.setdefault(int(float(line["epoch"])), {})
            merged.update({k: float(v) for k, v in line.items() if v not in ("", None) and k != "epoch"})
    return epochs


def run_metrics(root: Path, log_dir: Path | None) -> dict[int, dict[str, float]]:
    """A run's metrics.csv, merged per Lightning epoch over the processes it took: a resumed run's
    earlier files were moved to ``root/metrics_part<k>.csv`` (the CSV logger deletes its file when a
    new process opens the folder)."""
    epochs: dict[int, dict[str, float]] = {}
    parts = sorted(root.glob("metrics_part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics_part")))
    for path in [*parts, *([log_dir / "metrics.csv"] if log_dir else [])]:
        for epoch, values in read_metrics(path).items():
            epochs.setdefault(epoch, {}).update(values)
    return epochs


def wake_curves(epochs: dict[int, dict[str, float]], initial: dict[str, float | None]) -> dict[str, Any]:
    """The curves indexed by wake epoch 0..E ([0]: before training) and the diagnostics."""
    wake = sorted((m for m in epochs.values() if m.get("phase") == 2.0), key=lambda m: m.get("wake_epoch", m.get("forward_epoch", 0) + 1))

    def curve(key: str, first: float | None) -> list[float | None]:
        return [first] + [m.get(key) for m in wake]

    diag_keys = sorted({k for m in wake for k in m if k.startswith("diag/")})
    stat_keys = sorted({k for m in wake for k in m if k.startswith("dfc/") and k.endswith("_epoch")})
    changed = []
    for epoch in sorted(epochs):  # sleep / pre-training epochs do not change W: same validation
        prev = epochs.get(epoch - 1, {})
        now = epochs[epoch]
        if epoch > 0 and now.get("phase") in (0.0, 1.0) and "val_loss" in now and "val_loss" in prev:
            if not math.isclose(now["val_loss"], prev["val_loss"], rel_tol=1e-6):
                changed.append(epoch)
    return {
        "curve_val_acc": curve("val_acc", initial["val_acc"]),
        "curve_val_loss": curve("val_loss", initial["val_loss"]),
        "curve_train_loss": curve("train_loss_epoch", None),
        "curve_train_acc": curve("train_acc", None),
        "diagnostics": {k[len("diag/"):]: [None] + [m.get(k) for m in wake] for k in diag_keys} or None,
        # the wake simulation per batch (epoch means; "clipped": tensors clipped in the epoch)
        "wake_stats": {k[len("dfc/"):-len("_epoch")]: [None] + [m.get(k) for m in wake] for k in stat_keys} or None,
        "sleep_val_changed": changed,
    }


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Fit and test one (row, seed); returns the JSON record (status ok / failed)."""
    import torch

    from lightning_dfc.shell.callbacks import ConditionMonitor
    from lightning_dfc.shell.cli import build_cli
    from lightning_dfc.core.schedule import Phase

    torch.set_num_threads(spec["threads"])
    record: dict[str, Any] = {"row": spec["row"], "seed": spec["seed"], "config": spec["config"],
                              **spec["settings"], "machine": machine()}

    def failed(reason: str, **extra: Any) -> dict[str, Any]:
        print(f"{PREFIX} {spec['row']} / seed {spec['seed']}: failed: {reason}", flush=True)
        return {**record, **extra, "status": "failed", "reason": reason[:1000]}

    try:
        cli = build_cli(spec["cli_args"], run=False)
    except SystemExit as err:  # jsonargparse reports bad arguments on stderr and exits
        return failed(f"the CLI rejected the configuration (exit {err.code}; see its message above)")
    except Exception as err:  # noqa: BLE001
        return failed(f"building the run failed: {type(err).__name__}: {err}")
    datamodule, model, trainer = cli.datamodule, cli.model, cli.trainer
    missing = datamodule.missing_files()
    if missing:
        return failed(f"data missing: {', '.join(missing)} in {datamodule.raw_folder}")
    try:
        datamodule.setup("fit")
        datamodule.setup("test")
        schedule = model.dfc_schedule
        batches = len(datamodule.train_dataloader())
        record.update(
            variant=model.dfc_variant, num_train=len(datamodule.train_set), num_val=len(datamodule.val_set),
            num_test=len(datamodule.test_set), batch_size=datamodule.batch_size, batches_per_epoch=batches,
            pretrain_epochs=schedule.pretrain, sleep_before=schedule.sleep_before if schedule.train_feedback else 0,
            sleep_after=schedule.sleep_after if schedule.train_feedback else 0,
            paper_pretrain_epochs=spec["paper_pretrain_epochs"],
        )
        paper = spec["paper_pretrain_epochs"]
        subset = spec["settings"].get("scale") != "full"  # at full scale the example's epochs are the paper's
        paper_batch = spec.get("paper_batch_size", 128)
        expected = None if paper is None else subset_pretrain_epochs(paper, batches, paper_batch)
        if subset and paper is not None and schedule.pretrain != expected:
            note = (f"{schedule.pretrain} pre-training epochs of {batches} batches, but the paper's {paper} "
                    f"epochs of {math.ceil(55_000 / paper_batch)} batches are {expected} here")
            record["pretrain_note"] = note
            print(f"{PREFIX} {spec['row']} / seed {spec['seed']}: note: {note}", flush=True)
        timer = _phase_timer()
        trainer.callbacks.insert(0, timer)
        if spec["diagnostics"]:
            monitor = ConditionMonitor(metrics=spec["diagnostics"], phases=("wake",), at_epoch_end=True,
                                       max_samples=spec["diagnostic_samples"], per_layer=True)
            trainer.callbacks.insert(1, monitor)  # after the timer: its cost counts as "other"
        root, resume = Path(spec["root"]), spec.get("resume_from")
        segment = len(list(root.glob("segment_*.json")))  # the processes this run took before
        if resume:
            record["resumed_from_epoch"] = int(torch_load_epoch(resume))  # the Lightning epoch saved last
            current = Path(resume).parents[1] / "metrics.csv"
            if current.is_file():  # keep it from the logger, which deletes it on opening the folder
                current.rename(root / f"metrics_part{len(list(root.glob('metrics_part*.csv')))}.csv")
            print(f"{PREFIX} {spec['row']} / seed {spec['seed']}: resuming after Lightning epoch "
                  f"{record['resumed_from_epoch']} from {resume}", flush=True)
        saved_initial = root / "initial_validation.json"
        start = time.perf_counter()
        if resume and saved_initial.is_file():  # the untrained network's, measured when the run started
            initial = json.loads(saved_initial.read_text())
        else:
            initial = initial_validation(model, datamodule, str(trainer.precision))
            if spec.get("progress"):
                saved_initial.write_text(json.dumps(initial))
        initial_seconds = time.perf_counter() - start
        if spec.get("progress"):
            base = {"row": spec["row"], "seed": spec["seed"], "config": spec["config"], **spec["settings"]}
            progress = _wake_epoch_progress(spec["progress"], base, schedule, timer, segment, spec.get("deadline"))
            trainer.callbacks.append(progress)
    except Exception as err:  # noqa: BLE001
        return failed(f"setting up the run failed: {type(err).__name__}: {err}")

    error = None
    try:
        result = fit_and_test(trainer, model, datamodule, ckpt_path=resume)
    except Exception as err:  # noqa: BLE001 (diverged runs etc. are reported, not fatal)
        error, result = f"{type(err).__name__}: {err}", None
    if spec.get("progress"):
        (root / f"segment_{segment}.json").write_text(json.dumps(timer.seconds))
        if progress.stopped and error is None:
            return {**record, "status": "stopped", "lightning_epochs_run": progress.last_epoch}
    log_dir = Path(trainer.logger.log_dir) if trainer.logger is not None else None
    epochs = run_metrics(Path(spec["root"]), log_dir)
    record.update(wake_curves(epochs, initial))
    seconds = {**timer.seconds, "initial_validation": initial_seconds}
    if result is not None:
        seconds.update(fit=result["fit_seconds"], test=result["test_seconds"])
        seconds["other"] = result["fit_seconds"] - sum(timer.seconds.values())
    if segment:  # resumed: the earlier processes' phase times added (their "other" and "fit" are lost)
        record["segments"] = segment + 1
        for key, value in _earlier_seconds(root, segment).items():
            seconds[key] = seconds.get(key, 0.0) + value
    record.update(seconds=seconds, wake_epochs_run=len(record["curve_val_acc"]) - 1,
                  lightning_epochs_run=int(trainer.current_epoch))
    if error is not None:
        return failed(error)
    if not epochs:
        return failed(f"no metrics.csv in {log_dir} (the config's logger must be a CSVLogger)")
    tested = result["tested"]
    best_epoch = result["best_epoch"]
    best_wake = sum(schedule(e).phase is Phase.WAKE for e in range(best_epoch + 1))
    record.update(
        monitor=result["monitor"], best_score=result["best_score"], best_lightning_epoch=best_epoch,
        best_wake_epoch=best_wake, best_val_acc=record["curve_val_acc"][best_wake],
        best_val_loss=record["curve_val_loss"][best_wake], test_loss=float(tested["test_loss"]),
        test_acc=float(tested["test_acc"]) if "test_acc" in tested else None,
    )
    record["test_error"] = 100 * (1 - record["test_acc"]) if record["test_acc"] is not None else None
    for k, loss in enumerate(record["curve_val_loss"][1:], 1):
        if loss is None or not math.isfinite(loss):
            return failed(f"diverged: validation loss {loss} after wake epoch {k}")
    if len(record["curve_val_acc"]) - 1 != spec["settings"]["epochs"]:
        return failed(f"{len(record['curve_val_acc']) - 1} wake epochs in metrics.csv, expected {spec['settings']['epochs']}")
    return {**record, "status": "ok"}


def worker_main(spec_path: str) -> None:
    """``--worker SPEC``: run one spec, write its record to ``spec["result"]``."""
    spec = json.loads(Path(spec_path).read_text())
    sys.argv = sys.argv[:1]
    try:
        record = run_one(spec)
    except BaseException as err:  # noqa: BLE001 (even KeyboardInterrupt: leave a record)
        record = {"row": spec["row"], "seed": spec["seed"], "config": spec["config"], **spec["settings"],
                  "status": "failed", "reason": f"{type(err).__name__}: {err}"[:1000],
                  "interrupted": isinstance(err, KeyboardInterrupt)}
    Path(spec["result"]).write_text(json.dumps(record))


# ------------------------------------------------------------------------------------ all runs
def _summary(rec: dict[str, Any]) -> str:
    if rec["status"] != "ok":
        return f"failed: {rec.get('reason', '')}"
    fit = rec.get("seconds", {}).get("fit", math.nan)
    if rec.get("test_error") is not None:
        what = f"test error {rec['test_error']:.2f} %, best val acc {100 * rec['best_val_acc']:.2f} %"
    else:
        what = f"test loss {rec['test_loss']:.4f}, best val loss {rec['best_val_loss']:.4f}"
    return f"ok, {what} (wake epoch {rec['best_wake_epoch']}), fit {_duration(fit)}"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    seeds = args.seeds or [42]
    rows = args.rows or DEFAULT_ROWS
    records = read_results(args.results)
    done = {key: rec for key, rec in finished_runs(records, lambda rec: (rec["row"], rec["seed"])).items()
            if not rec.get("interrupted")}  # a killed or interrupted run is run again
    in_progress = finished_runs(records, lambda rec: (rec["row"], rec["seed"]), statuses=("running",))
    todo = []
    for seed in seeds:  # seed-major: an interrupted benchmark has whole seeds done
        for row in rows:
            if (row, seed) in in_progress and (row, seed) not in done:
                check_same_settings(args.results, f"{row} / seed {seed} (in progress)", in_progress[(row, seed)],
                                    settings(args, row))
            if (row, seed) in done:
                check_same_settings(args.results, f"{row} / seed {seed}", done[(row, seed)], settings(args, row))
                print(f"{PREFIX} {row} / seed {seed}: in {args.results}, skipped", flush=True)
            else:
                todo.append((row, seed))
    args.results.parent.mkdir(parents=True, exist_ok=True)

    def root_for(row: str, seed: int) -> Path:
        if args.keep_runs is not None:
            root = args.keep_runs.resolve() / f"{row}_seed{seed}"
            root.mkdir(parents=True, exist_ok=True)
            return root
        return Path(tempfile.mkdtemp(prefix=f"lc_{row}_{seed}_"))

    def finish(rec: dict[str, Any], root: Path) -> None:
        if rec["status"] == "stopped":  # at --stop-after: its checkpoint and wake-epoch records stay
            print(f"{PREFIX} {rec['row']} / seed {rec['seed']}: stopped after Lightning epoch "
                  f"{rec['lightning_epochs_run']} (--stop-after); --resume continues it", flush=True)
            return
        rec["finished"] = utc_now()
        append_result(args.results, rec)
        records.append(rec)
        print(f"{PREFIX} {rec['row']} / seed {rec['seed']}: {_summary(rec)}", flush=True)
        if args.keep_runs is None:
            shutil.rmtree(root, ignore_errors=True)

    def out_of_time() -> bool:
        if args.deadline is None or time.time() < args.deadline:
            return False
        print(f"{PREFIX} --stop-after reached: runs not started are left to --resume", flush=True)
        return True

    if args.jobs == 0:
        for row, seed in todo:
            if out_of_time():
                break
            root = root_for(row, seed)
            print(f"{PREFIX} {row} / seed {seed}: running in this process ({root})", flush=True)
            finish(run_one(run_spec(args, row, seed, root)), root)
        return read_results(args.results)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    running: dict[subprocess.Popen, tuple[str, int, Path, dict[str, Any], Any]] = {}
    pending = list(todo)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _terminated)  # `kill PID` of this process stops its workers too
    try:
        while pending or running:
            if pending and len(running) < args.jobs and out_of_time():
                pending = []
            while pending and len(running) < args.jobs:
                row, seed = pending.pop(0)
                root = root_for(row, seed)
                spec = run_spec(args, row, seed, root)
                spec_path = root / "spec.json"
                spec_path.write_text(json.dumps(spec))
                log = (root / "worker.log").open("w")
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
                running[proc] = (row, seed, root, spec, log)
                print(f"{PREFIX} {row} / seed {seed}: running, pid {proc.pid}, log {root / 'worker.log'}", flush=True)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                row, seed, root, spec, log = running.pop(proc)
                log.close()
                result = Path(spec["result"])
                if result.is_file():
                    rec = json.loads(result.read_text())
                else:
                    rec = {"row": row, "seed": seed, "config": spec["config"], **spec["settings"],
                           "status": "failed", "interrupted": True,  # killed: --resume runs it again
                           "reason": f"worker exited with code {proc.returncode}: {_tail(root / 'worker.log')}"[:1000]}
                if rec["status"] != "ok" and args.keep_runs is None:
                    rec["log_tail"] = _tail(root / "worker.log", 20)
                finish(rec, root)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc, (_row, _seed, root, _spec, log) in running.items():
            proc.terminate()
            proc.wait()
            log.close()
            if args.keep_runs is None:
                shutil.rmtree(root, ignore_errors=True)
    return read_results(args.results)  # with the runs' wake-epoch records, which the workers append


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------------ outputs
def latest_runs(records: list[dict[str, Any]], rows: Sequence[str], seeds: Sequence[int]):
    """{row: [the last finished (ok or failed) record of each seed, in seed order]}."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in records:
        if rec.get("row") in rows and rec.get("seed") in seeds and rec.get("status") in ("ok", "failed"):
            last[(rec["row"], rec["seed"])] = rec
    return {row: [last[(row, s)] for s in seeds if (row, s) in last] for row in rows}


def _published(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cell(values: list[float], ok: list, recs: list, seeds: Sequence[int], digits: int = 2,
          running: bool = False) -> str:
    failed = [r for r in recs if r["status"] != "ok"]
    if not ok:
        return f"failed ({len(failed)}/{len(seeds)} seeds)" if failed else "in progress" if running else "not run"
    cell = fmt_mean_std(values, digits)
    if len(ok) < len(seeds):
        cell += f" ({len(ok)}/{len(seeds)} seeds" + (f", {len(failed)} failed" if failed else "") + ")"
    return cell


def _duration(seconds: float) -> str:
    if seconds < 0.5:
        return "0"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _mean_curve(recs: list[dict[str, Any]], key: str) -> list[list[float]]:
    """Per-seed curves (None -> nan), cut to the shortest."""
    curves = [[math.nan if v is None else v for v in r[key]] for r in recs if r.get(key)]
    n = min((len(c) for c in curves), default=0)
    return [c[:n] for c in curves]


def runs_in_progress(records: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """{(row, seed): its wake-epoch records} of the runs whose last record is ``running`` (the
    last record per wake epoch: a resumed run may repeat the epoch it was stopped in)."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in records:
        if "row" in rec and "seed" in rec:
            last[(rec["row"], rec["seed"])] = rec
    out = {}
    for key, rec in last.items():
        if rec.get("status") == "running":
            epochs = {r["wake_epoch"]: r for r in records
                      if (r.get("row"), r.get("seed")) == key and r.get("status") == "running"}
            out[key] = [epochs[k] for k in sorted(epochs)]
    return out


def _progress_report(records: list[dict[str, Any]]) -> list[str]:
    """The runs in progress: wake epochs done and the validation accuracy (loss) after each."""
    progress = runs_in_progress(records)
    if not progress:
        return []
    body = []
    for (row, seed), recs in sorted(progress.items(), key=lambda item: (list(ROWS).index(item[0][0]), item[0][1])):
        metric = "val_loss" if ROWS[row].autoencoder else "val_acc"
        scale, digits = (1, 4) if ROWS[row].autoencoder else (100, 2)
        values = [r.get(metric) for r in recs]
        shown = ", ".join("—" if v is None else f"{scale * v:.{digits}f}" for v in values)
        body.append([ROWS[row].label, str(seed), str(recs[-1]["wake_epoch"]), f"{recs[-1]['epochs']}",
                     recs[-1]["finished"], shown])
    return ["Runs in progress (resumable; one record per wake epoch): validation accuracy (%) (autoencoder: "
            "loss) after each wake epoch so far:", "",
            markdown(["row", "seed", "wake epochs done", "of", "last record (UTC)", "validation after each wake "
                      "epoch"], body), ""]


def make_report(args: argparse.Namespace, records: list[dict[str, Any]]) -> str:
    seeds = args.seeds or sorted({r["seed"] for r in records if "seed" in r})
    rows = args.rows or [k for k in ROWS if any(r.get("row") == k for r in records)]
    runs = latest_runs(records, rows, seeds)
    ok_runs = {row: [r for r in recs if r["status"] == "ok"] for row, recs in runs.items()}
    running = {row for row, _seed in runs_in_progress(records)}
    out: list[str] = []

    classification = [r for r in rows if not ROWS[r].autoencoder]
    autoencoder = [r for r in rows if ROWS[r].autoencoder]
    if classification:
        body = []
        for row in classification:
            recs, ok = runs[row], ok_runs[row]
            pub = PUBLISHED.get(row, {})
            readme = pub.get("readme")
            body.append([
                ROWS[row].label, f"`{ROWS[row].stem(row)}`",
                _cell([r["test_error"] for r in ok], ok, recs, seeds, running=row in running),
                _cell([100 * r["best_val_acc"] for r in ok], ok, recs, seeds, running=row in running),
                ", ".join(str(r["best_wake_epoch"]) for r in ok) or "—",
                _published(pub.get("table1")), _published(pub.get("strong")),
                f"{100 - readme:.2f} ({readme:.2f} % acc.)" if readme else "—",
            ])
        out += ["MNIST classification: test error (%) at the best-validation checkpoint, mean ± std over "
                "seeds; published test errors (%) beside it.", "",
                markdown(["row", "config", "test error (%), ours", "best val. acc. (%), ours",
                          "best wake epoch (per seed)", "DFC paper Table 1 (100 ep.)",
                          "Strong-DFC paper (40 ep.)", "authors' README run (1 run)"], body), ""]
    if autoencoder:
        body = []
        for row in autoencoder:
            recs, ok = runs[row], ok_runs[row]
            body.append([
                ROWS[row].label, f"`{ROWS[row].stem(row)}`",
                _cell([r["test_loss"] for r in ok], ok, recs, seeds, 4),
                _cell([r["best_val_loss"] for r in ok], ok, recs, seeds, 4),
                ", ".join(str(r["best_wake_epoch"]) for r in ok) or "—",
                _published(PUBLISHED.get(row, {}).get("table1"), 4),
            ])
        out += ["MNIST autoencoder: test loss (MSE) at the best-validation checkpoint, mean ± std over seeds.",
                "", markdown(["row", "config", "test loss, ours", "best val. loss, ours",
                              "best wake epoch (per seed)", "DFC paper Table 1 (25 ep.)"], body), ""]

    # the curves, as a table
    for group, key, title, scale, digits in (
        (classification, "curve_val_acc", "Validation accuracy (%) after wake epoch k (k = 0: untrained), "
         "mean over seeds:", 100, 1),
        (autoencoder, "curve_val_loss", "Autoencoder validation loss after wake epoch k, mean over seeds:", 1, 4),
    ):
        curves = {row: _mean_curve(ok_runs[row], key) for row in group}
        length = max((len(c[0]) for c in curves.values() if c), default=0)
        if not length:
            continue
        ks = list(range(length))
        if length > 21:  # keep the table readable
            ks = sorted({0, 1, 2, 3, 5, *range(10, length, 10), length - 1})
        body = []
        for row in group:
            if not curves[row]:
                body.append([ROWS[row].label] + ["—"] * len(ks))
                continue
            means = [statistics.fmean(c[k] for c in curves[row]) if k < len(curves[row][0]) else math.nan
                     for k in ks]
            body.append([ROWS[row].label] + [f"{scale * m:.{digits}f}" if math.isfinite(m) else "—" for m in means])
        out += [title, "", markdown(["row"] + [str(k) for k in ks], body), ""]

    # wall time
    body = []
    for row in rows:
        ok = ok_runs[row]
        if not ok:
            body.append([ROWS[row].label] + ["—"] * 8)
            continue
        pre = sorted({(r["pretrain_epochs"], r["pretrain_epochs"] * r["batches_per_epoch"]) for r in ok})

        def mean_time(key: str, ok=ok) -> str:
            values = [r["seconds"].get(key) for r in ok]
            return _duration(statistics.fmean(values)) if all(v is not None for v in values) else "—"

        body.append([ROWS[row].label, "; ".join(f"{e} ({u:,})" for e, u in pre),
                     *(mean_time(k) for k in ("pretrain", "sleep", "wake", "validation", "other", "fit", "test"))])
    out += ["Wall time per run (mean over the seeds that finished; pretrain/sleep/wake: the training batches "
            "of those epochs; other: diagnostics, checkpoints, Lightning):", "",
            markdown(["row", "pre-training epochs (updates)", "pretrain", "sleep", "wake", "validation",
                      "other", "fit", "test"], body), ""]

    # diagnostics
    diag_rows = [row for row in rows if any(r.get("diagnostics") for r in ok_runs[row])]
    if diag_rows:
        wanted = ["condition_2", "condition_2_ss", "control_loss", "angle_bp", "angle_gn", "angle_h",
                  "angle_q_jt", "angle_q_pinv"]
        present = [k for k in wanted if any(k in (r.get("diagnostics") or {}) for row in diag_rows
                                            for r in ok_runs[row])]
        body = []
        for row in diag_rows:
            cells = [ROWS[row].label]
            for key in present:
                curves = [[math.nan if v is None else v for v in r["diagnostics"][key]]
                          for r in ok_runs[row] if key in (r.get("diagnostics") or {})]
                if not curves:
                    cells.append("—")
                    continue
                first = statistics.fmean(c[1] for c in curves)
                last = statistics.fmean(c[-1] for c in curves)
                spec = ".3g" if key in ("control_loss",) else ".3f" if key.startswith("condition") else ".1f"
                cells.append(f"{first:{spec}} → {last:{spec}}")
            body.append(cells)
        out += ["Diagnostics (ConditionMonitor, last batch of the wake epoch, wake epoch 1 → last, mean over "
                "seeds): Condition 2 ||P_J Q||/||Q|| (1 = Q in J's row space) and at the controlled steady "
                "state (`_ss`), control loss H = ||Q u_ss||^2, angles in degrees between the applied update "
                "and BP / damped Gauss-Newton / -dH/dW, and of Q with J^T / J's damped pseudo-inverse:", "",
                markdown(["row"] + present, body), ""]

    # the wake simulation
    stat_rows = [row for row in rows
                 if ROWS[row].dfc_family and any((r.get("wake_stats") or {}).get("steps") for r in ok_runs[row])]
    if stat_rows:
        keys = ["steps", "non_converged", "excluded", "diverged_samples", "clipped"]
        body = []
        for row in stat_rows:
            cells = [ROWS[row].label]
            for key in keys:
                curves = [[math.nan if v is None else v for v in r["wake_stats"][key]]
                          for r in ok_runs[row] if key in (r.get("wake_stats") or {})]
                if not curves or len(curves[0]) < 2:
                    cells.append("—")
                    continue
                first = statistics.fmean(c[1] for c in curves)
                last = statistics.fmean(c[-1] for c in curves)
                cells.append(f"{first:.4g} → {last:.4g}")
            body.append(cells)
        out += ["Wake-phase simulation, wake epoch 1 → last (mean over seeds): Euler steps, non-converged, "
                "excluded (dropped from the update) and diverged samples per batch, update tensors clipped "
                "in the epoch:", "",
                markdown(["row", "steps", "non-converged", "excluded", "diverged", "clipped"], body), ""]

    out += _progress_report(records)

    # notes
    used = [r for recs in ok_runs.values() for r in recs]
    full = any(r.get("scale") == "full" for r in records)
    notes = []
    if used:
        sizes = sorted({(r["num_train"], r["num_val"], r["num_test"]) for r in used})
        epochs = sorted({r["epochs"] for r in used})
        notes.append(
            f"Ours: {', '.join(f'{a:,} train / {b:,} validation / {c:,} test images' for a, b, c in sizes)} "
            f"({'the complete MNIST' if full else 'the offline MNIST subset'}, seeded split), "
            f"{'/'.join(map(str, epochs))} wake epoch(s), mean ± std over "
            f"seeds {', '.join(map(str, seeds))}; best wake epoch = wake epochs trained at the checkpoint of best "
            "validation accuracy (autoencoder: loss), where the test value is taken."
        )
        overrides: dict[str, list[str]] = {}
        for r in used:
            if r.get("override"):
                labels = overrides.setdefault(" ".join(r["override"]), [])
                if ROWS[r["row"]].label not in labels:
                    labels.append(ROWS[r["row"]].label)
        if overrides:
            notes.append("Extra CLI arguments: " + "; ".join(f"`{o}` ({', '.join(labels)})"
                                                            for o, labels in overrides.items()) + ".")
        shas = sorted({(r["config"], r["config_sha"]) for r in used})
        notes.append(f"Configs ({'the example as it is' if full else 'example + subset override'}, sha256 prefix): "
                     + ", ".join(f"`{c}` {s}" for c, s in shas) + ".")
        prenotes = sorted({r["pretrain_note"] for r in used if r.get("pretrain_note")})
        if prenotes:
            notes.append("Pre-training differs from the paper's number of updates: " + "; ".join(prenotes) + ".")
        changed = [f"{r['row']}/{r['seed']}" for r in used if r.get("sleep_val_changed")]
        if changed:
            notes.append(f"Validation changed during sleep or pre-training epochs (it should not) in: {', '.join(changed)}.")
        hosts = sorted({machine_text(m) for r in used if (m := r.get("machine"))})
        if hosts:
            notes.append("Machine: " + "; ".join(hosts) + ".")
    failures = [r for recs in runs.values() for r in recs if r["status"] != "ok"]
    for rec in failures:
        notes.append(f"Failed: {rec['row']} / seed {rec['seed']}: {rec.get('reason', '?')[:300]}")
    notes.append(
        ("Published: full MNIST (55,000 training images), as ours; the papers train longer (below), so compare "
         "at matched epochs where the curves allow. " if full else
         "Published: full MNIST (55,000 training images), so not comparable in absolute terms with our "
         "5,000-image, few-epoch runs; compare the ordering of the rows. ") + "DFC paper Table 1 (Meulemans et al. "
        "2021): 100 epochs (autoencoder 25), 5 seeds, BP/DFA/DFC/DFC (fixed). Strong-DFC paper (Meulemans et "
        "al. 2022, slides): 40 epochs; its 'Strong-DFC (noise)' is our single-phase row, 'Strong-DFC (no "
        "noise)' our two-phase row (noise-free wake dynamics), 'DFC (no noise)' our DFC row (the authors' DFC "
        "run uses batch 32, dt 0.02, alpha 1.77e-3; ours the DFC paper's config), 'DFC (noise)' our DFC (noise) "
        "rows (its command is not published: `dfc_noise` adds Strong-DFC's noise to the DFC config, "
        "`dfc_noisy_dynamics` is the authors' DFC command with --noisy_dynamics); which command "
        "made each slide row is our reading, the slides do not say. README: one run of the authors' code "
        "(mariacer/strong_dfc dfc/EXPERIMENTS.rst), shown as test error 100 - accuracy. — = not published."
    )
    return "\n".join(out + ["\n\n".join(notes), ""])


def make_figure(args: argparse.Namespace, records: list[dict[str, Any]], path: Path) -> None:
    """Validation accuracy (autoencoder: loss) per wake epoch, mean over seeds, min-max band."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    seeds = args.seeds or sorted({r["seed"] for r in records if "seed" in r})
    rows = args.rows or [k for k in ROWS if any(r.get("row") == k for r in records)]
    runs = latest_runs(records, rows, seeds)
    ok_runs = {row: [r for r in recs if r["status"] == "ok"] for row, recs in runs.items()}
    accuracy = [r for r in rows if not ROWS[r].autoencoder]
    panels = [(g, key, label, scale, zoom) for g, key, label, scale, zoom in (
        (accuracy, "curve_val_acc", "validation accuracy (%)", 100.0, False),
        # the same from wake epoch 1, its y-range the top rows' (they lie within a few points)
        (accuracy, "curve_val_acc", "validation accuracy (%), from wake epoch 1", 100.0, True),
        ([r for r in rows if ROWS[r].autoencoder], "curve_val_loss", "validation loss (MSE)", 1.0, False),
    ) if any(ok_runs[r] for r in g)]
    fig = Figure(figsize=(7.5 * max(len(panels), 1), 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (group, key, ylabel, scale, zoom) in zip(axes, panels):
        ranges = []  # (highest, lowest) of each plotted mean curve
        for row in group:
            curves = _mean_curve(ok_runs[row], key)
            if not curves or not curves[0]:
                continue
            data = scale * np.asarray(curves, dtype=float)
            x = np.arange(data.shape[1])
            start = 1 if zoom and data.shape[1] > 1 else 0
            mean = np.nanmean(data, 0)
            line, = ax.plot(x[start:], mean[start:], marker="o", markersize=3,
                            label=f"{ROWS[row].label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
            if len(curves) > 1:
                ax.fill_between(x[start:], np.nanmin(data, 0)[start:], np.nanmax(data, 0)[start:],
                                color=line.get_color(), alpha=0.2)
            ranges.append((float(np.nanmax(mean[start:])), float(np.nanmin(mean[start:]))))
        if zoom and ranges:
            top = max(high for high, _ in ranges)
            low = max(min(lowest for _, lowest in ranges), top - 6.0)  # rows further down leave the panel
            ax.set_ylim(low - 0.2, top + 0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("wake (forward-weight) epoch (0: untrained)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if not panels:
        axes[0].text(0.5, 0.5, "no finished runs", ha="center", va="center")
    used = [r for recs in ok_runs.values() for r in recs]
    sizes = sorted({(r["num_train"], r["num_val"], r["num_test"]) for r in used})
    size_text = "; ".join(f"{a:,} train / {b:,} validation / {c:,} test images" for a, b, c in sizes)
    full = any(r.get("scale") == "full" for r in used)
    fig.suptitle(f"{'MNIST' if full else 'MNIST subset'}: {size_text or 'no runs'}\nmean over seed{'s' if len(seeds) > 1 else ''} "
                 f"{', '.join(map(str, seeds))}" + (", band: min-max over seeds" if len(seeds) > 1 else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    sys.argv = sys.argv[:1]  # the runs get their CLI arguments explicitly
    records = read_results(args.results) if args.table_only else run_all(args)
    report = make_report(args, records)
    print(report, flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    if args.figure:
        make_figure(args, records, args.figure)
        print(f"{PREFIX} figure: {args.figure}", flush=True)
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        main()
