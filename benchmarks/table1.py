"""The DFC paper's Table 1, side by side: train every method on every task, write a Markdown table.

Rows are methods, columns are tasks; each cell is the mean ± standard deviation over seeds of

* ``mnist``, ``fmnist`` (classification): **test error in %**, ``100 * (1 - test_acc)``;
* ``mnist_autoencoder``: **test loss** (MSE of the 784-256-32-256-784 autoencoder);
* ``mnist_train``: **train loss**, the lowest epoch-mean training loss over the forward-weight
  (wake) epochs (``train_loss_epoch``, the quantity the config's checkpoint monitors: the paper's
  MNIST-train column selects on the training loss),

next to the paper's value where one is published (``shared/reference/dfc_reference.md`` section
7: BP, DFA, DFC and DFC (fixed); nothing is published for DFC-SS, DFC-SSA and their fixed
variants). A second table gives the wall time of ``fit`` per run.

Each run is one example config, ``examples/<task>_<method>.yaml``, trained through
:func:`lightning_dfc.shell.cli.build_cli`: ``fit`` (``--epochs`` forward-weight epochs; a trained-feedback
DFC variant adds its sleep pre-training and sleep epochs on top, as in the paper), then ``test``
at the **best checkpoint**, the one the config's ``ModelCheckpoint`` keeps: highest ``val_acc``
(classification), lowest ``val_loss`` (autoencoder), lowest ``train_loss_epoch`` (MNIST-train, which
runs no validation). This is the paper's "test value at the epoch of best validation". All
methods of a task see the same data: the train/validation split is seeded by the data module's
``split_seed`` (42), independent of the run's seed; ``--seeds`` sets ``seed_everything``.

A (task, method) pair without a config is shown as "no published config" (the reference does not
publish its hyperparameters); a task whose data files are missing (e.g. Fashion-MNIST offline) is
shown as "not run: data missing" and the other tasks go on.

Every finished run is appended as one JSON line to ``--results`` (default: ``--output`` with the
suffix ``.jsonl``), so that an interrupted benchmark continues with ``--resume`` (runs already in
the file are skipped; the settings must match) and the table can be re-made from the file alone
with ``--table-only``. Runs that raise (e.g. diverge) are recorded as failed and shown as such.

Short version on the offline 6,000-image MNIST subset (one thread, 1,000 validation images)::

    python benchmarks/table1.py --tasks mnist mnist_autoencoder --seeds 1 2 \\
        --epochs mnist=5 mnist_autoencoder=3 --val-size 1000 --data-dir ../shared/data \\
        --threads 1 --output table1.md

Full version (the paper's epochs, 5,000 validation images, full data sets, on a GPU machine add
``--override --trainer.accelerator=gpu``)::

    python benchmarks/table1.py --seeds 1 2 3 4 5 --epochs paper --data-dir data --output table1.md

Options:
    --tasks          tasks (columns), default all four: mnist fmnist mnist_autoencoder mnist_train
    --methods        methods (rows), default all eight: bp dfa dfc dfc_ss dfc_ssa dfc_fixed
                     dfc_ss_fixed dfc_ssa_fixed
    --seeds          seeds (default 42); with --table-only default: every seed in the file
    --epochs         forward-weight epochs: ``N`` for all tasks, ``TASK=N`` per task (both may be
                     given, the per-task value wins), ``paper`` for the configs' own epochs
                     (100, autoencoder 25); default 5
    --val-size       validation images held out of the training set (configs: 5000)
    --train-subset   keep only the first N training images after the split
    --test-subset    keep only the first N test images
    --data-dir       folder with MNIST/raw/ and FashionMNIST/raw/ (never downloads unless --download)
    --threads        torch.set_num_threads (default: torch's default)
    --override       extra LightningCLI arguments for every run (e.g. a shorter simulation)
    --results        JSON-lines file of finished runs; --resume, --table-only
    --output         write the Markdown tables here (they are printed in any case)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import (  # noqa: E402  (the shared module lives beside this script)
    DFC_TABLE1,
    REPO,
    UsageError,
    append_result,
    check_results_file,
    check_same_settings,
    cli_args as run_cli_args,
    finished_runs,
    fit_and_test,
    machine,
    machine_text,
    markdown,
    read_results,
    torch_load_epoch,  # noqa: F401  (kept importable from here)
    utc_now,
)

TASKS: dict[str, dict[str, Any]] = {
    "mnist": dict(prefix="mnist_", title="MNIST test error (%)", key="error"),
    "fmnist": dict(prefix="fmnist_", title="F-MNIST test error (%)", key="error"),
    "mnist_autoencoder": dict(prefix="mnist_autoencoder_", title="MNIST-autoencoder test loss",
                              key="test_loss"),
    "mnist_train": dict(prefix="mnist_train_", title="MNIST-train train loss", key="train_loss"),
}
METHODS: dict[str, str] = {
    "bp": "BP",
    "dfa": "DFA",
    "dfc": "DFC",
    "dfc_ss": "DFC-SS",
    "dfc_ssa": "DFC-SSA",
    "dfc_fixed": "DFC (fixed)",
    "dfc_ss_fixed": "DFC-SS (fixed)",
    "dfc_ssa_fixed": "DFC-SSA (fixed)",
    # the Strong-DFC paper's noise-robustness table (examples/*_strong_dfc*.yaml, *_dfc_noise.yaml)
    "dfc_noise": "DFC (noise)",
    "strong_dfc": "Strong-DFC (noise, single phase)",
    "strong_dfc_ss": "Strong-DFC (no noise, two phases)",
}
# Table 1 of the paper, mean and std over 5 seeds (dfc_reference.md section 7; full data sets,
# 100 epochs, autoencoder 25). Only these four methods are published.
PAPER: dict[tuple[str, str], tuple[float, float]] = DFC_TABLE1
DEFAULT_EPOCHS = 5


# ------------------------------------------------------------------------------------ options
def parse_epochs(items: Sequence[str], tasks: Sequence[str]) -> dict[str, int | None]:
    """``["5", "mnist_autoencoder=3"]`` -> {task: epochs}; ``None`` = the config's own (``paper``)."""
    default: int | None = DEFAULT_EPOCHS
    per_task: dict[str, int | None] = {}

    def number(text: str, what: str) -> int | None:
        if text == "paper":
            return None
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise UsageError(f"--epochs: {what} must be a positive integer or 'paper', got {text!r}")
        return value

    for item in items:
        if "=" in item:
            task, _, value = item.partition("=")
            if task not in TASKS:
                raise UsageError(f"--epochs: unknown task {task!r} in {item!r}; tasks: {', '.join(TASKS)}")
            per_task[task] = number(value, f"the epochs of {task}")
        else:
            default = number(item, "the epochs")
    return {task: per_task.get(task, default) for task in tasks}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="table1.py", description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (benchmarks/table1.py) for the columns and examples.",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help=f"columns, any of: {' '.join(TASKS)} (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                        help=f"rows, any of: {' '.join(METHODS)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seed_everything values (default 42; --table-only: all in the file)")
    parser.add_argument("--epochs", nargs="+", default=[str(DEFAULT_EPOCHS)], metavar="N|TASK=N",
                        help="forward-weight epochs: N, TASK=N or 'paper' (default 5)")
    parser.add_argument("--val-size", type=int, default=None, help="validation images (configs: 5000)")
    parser.add_argument("--train-subset", type=int, default=None, help="first N training images")
    parser.add_argument("--test-subset", type=int, default=None, help="first N test images")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw, FashionMNIST/raw")
    parser.add_argument("--download", action="store_true", help="let the data modules download")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--examples", type=Path, default=REPO / "examples", help="folder of the configs")
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[],
                        help="extra LightningCLI arguments for every run (must come last)")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON-lines file of runs (default: OUTPUT.jsonl, else table1_results.jsonl)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip runs already in --results")
    mode.add_argument("--table-only", action="store_true", help="only make the table from --results")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for name, choices in (("tasks", TASKS), ("methods", METHODS)):
            values = getattr(args, name)
            bad = [v for v in values if v not in choices]
            if bad:
                raise UsageError(f"--{name}: unknown {', '.join(map(repr, bad))}; choose from {' '.join(choices)}")
            if len(set(values)) != len(values):
                raise UsageError(f"--{name}: repeated entries in {values}")
        if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
            raise UsageError(f"--seeds: repeated seeds in {args.seeds}")
        for name in ("train_subset", "test_subset", "threads"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if args.val_size is not None and args.val_size < 1:
            raise UsageError(f"--val-size must be >= 1 (model selection needs validation), got {args.val_size}")
        args.epochs = parse_epochs(args.epochs, args.tasks)
        if args.data_dir is not None and not Path(args.data_dir).is_dir():
            raise UsageError(f"--data-dir {args.data_dir!r} is not a folder")
        if not args.examples.is_dir():
            raise UsageError(f"--examples {str(args.examples)!r} is not a folder")
        if args.results is None:
            args.results = args.output.with_suffix(".jsonl") if args.output else Path("table1_results.jsonl")
        check_results_file(args.results, args.resume, args.table_only)
    except UsageError as err:
        parser.error(str(err))
    return args


# ------------------------------------------------------------------------------------ runs
def config_path(args: argparse.Namespace, task: str, method: str) -> Path:
    return args.examples / f"{TASKS[task]['prefix']}{method}.yaml"


def settings(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """What makes two runs of the same (task, method, seed) comparable."""
    return {"epochs": args.epochs[task], "val_size": args.val_size, "train_subset": args.train_subset,
            "test_subset": args.test_subset, "override": list(args.override)}


def cli_args(args: argparse.Namespace, task: str, method: str, seed: int, root: Path) -> list[str]:
    data = {"data_dir": args.data_dir, "val_size": args.val_size, "train_subset": args.train_subset,
            "test_subset": args.test_subset}
    return run_cli_args([config_path(args, task, method)], seed=seed, root=root, epochs=args.epochs[task],
                        data=data, download=args.download, override=args.override)


def run_one(args: argparse.Namespace, task: str, method: str, seed: int) -> dict[str, Any]:
    """Fit and test one config; returns the JSON record (``status`` ok / skipped / failed)."""
    from lightning_dfc.shell.cli import build_cli

    record: dict[str, Any] = {"task": task, "method": method, "seed": seed,
                              "config": config_path(args, task, method).name, **settings(args, task)}
    with tempfile.TemporaryDirectory(prefix="table1_") as tmp:
        cli = build_cli(cli_args(args, task, method, seed, Path(tmp)), run=False)
        datamodule, model, trainer = cli.datamodule, cli.model, cli.trainer
        missing = getattr(datamodule, "missing_files", lambda: [])()
        if missing and not args.download:
            folder = getattr(datamodule, "raw_folder", "?")
            return {**record, "status": "skipped", "reason": f"data missing: {', '.join(missing)} in {folder}"}
        try:
            result = fit_and_test(trainer, model, datamodule)
        except FileNotFoundError as err:  # data vanished between the check and the run
            return {**record, "status": "skipped", "reason": f"data missing: {err}"}
        except Exception as err:  # noqa: BLE001 (diverged runs etc. are reported, not fatal)
            return {**record, "status": "failed", "reason": f"{type(err).__name__}: {err}"[:500]}
    tested, best_score = result["tested"], result["best_score"]
    test_loss = float(tested["test_loss"])
    value = {"error": 100 * (1 - float(tested.get("test_acc", math.nan))), "test_loss": test_loss,
             "train_loss": best_score}[TASKS[task]["key"]]
    return {
        **record, "status": "ok", "value": value, "test_loss": test_loss,
        "test_acc": float(tested["test_acc"]) if "test_acc" in tested else None,
        "monitor": result["monitor"], "best_score": best_score, "best_epoch": result["best_epoch"],
        "epochs_run": int(trainer.current_epoch), "num_train": len(datamodule.train_set),
        "num_test": len(datamodule.test_set), "fit_seconds": result["fit_seconds"],
        "test_seconds": result["test_seconds"],
    }


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds or [42]
    records = read_results(args.results)
    done = finished_runs(records, lambda rec: (rec["task"], rec["method"], rec["seed"]))
    host = machine()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        data_missing: str | None = None
        runnable = []
        for method in args.methods:
            if config_path(args, task, method).is_file():
                runnable.append(method)
            else:
                print(f"[table1] {task} / {method}: no config {config_path(args, task, method).name}", flush=True)
        for seed in seeds:  # seed-major: an interrupted benchmark has whole seeds done
            for method in runnable:
                key = (task, method, seed)
                if key in done:
                    check_same_settings(args.results, f"{task} / {method} / seed {seed}", done[key],
                                        settings(args, task))
                    print(f"[table1] {task} / {method} / seed {seed}: in {args.results}, skipped", flush=True)
                    continue
                if data_missing:
                    rec = {"task": task, "method": method, "seed": seed, "status": "skipped", "reason": data_missing}
                else:
                    print(f"[table1] {task} / {method} / seed {seed}: running", flush=True)
                    rec = run_one(args, task, method, seed)
                    rec.update(finished=utc_now(), machine=host)
                    if rec["status"] == "skipped":
                        data_missing = rec["reason"]
                print(f"[table1] {task} / {method} / seed {seed}: {rec['status']} "
                      f"{rec.get('value', rec.get('reason', ''))}"
                      + (f" ({rec['fit_seconds']:.0f} s fit)" if "fit_seconds" in rec else ""), flush=True)
                append_result(args.results, rec)
                records.append(rec)
    return records


# ------------------------------------------------------------------------------------ table
def fmt(task: str, mean: float, std: float | None) -> str:
    if TASKS[task]["key"] == "error":
        text, spread = f"{mean:.2f}", (f"{std:.2f}" if std is not None else None)
    elif TASKS[task]["key"] == "test_loss":
        text, spread = f"{mean:.4f}", (f"{std:.4f}" if std is not None else None)
    else:
        text, spread = f"{mean:.2e}", (f"{std:.1e}" if std is not None else None)
    return text if spread is None else f"{text} ± {spread}"


def make_tables(args: argparse.Namespace, records: list[dict[str, Any]]) -> str:
    """The Markdown result table, the wall-time table and a note on the settings."""
    seeds = args.seeds if args.seeds else sorted({r["seed"] for r in records if "seed" in r})
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:  # the last record of a (task, method, seed) wins
        if rec.get("seed") in seeds and rec.get("task") in args.tasks and rec.get("method") in args.methods:
            by_cell.setdefault((rec["task"], rec["method"]), []).append(rec)

    def latest(task: str, method: str) -> list[dict[str, Any]]:
        last: dict[int, dict[str, Any]] = {}
        for rec in by_cell.get((task, method), []):
            last[rec["seed"]] = rec
        return [last[s] for s in seeds if s in last]

    header = ["method"]
    for task in args.tasks:
        header += [f"{TASKS[task]['title']}, ours", "paper"]
    rows, time_rows = [], []
    for method in args.methods:
        row, time_row = [METHODS[method]], [METHODS[method]]
        for task in args.tasks:
            recs = latest(task, method)
            ok = [r for r in recs if r["status"] == "ok"]
            failed = [r for r in recs if r["status"] == "failed"]
            skipped = [r for r in recs if r["status"] == "skipped"]
            if not config_path(args, task, method).is_file() and not recs:
                cell = "no published config"
            elif ok:
                values = [r["value"] for r in ok]
                std = statistics.stdev(values) if len(values) > 1 else None
                cell = fmt(task, statistics.fmean(values), std)
                if len(ok) < len(seeds):
                    cell += f" ({len(ok)}/{len(seeds)} seeds" + (f", {len(failed)} failed" if failed else "") + ")"
            elif failed:
                cell = f"failed ({len(failed)}/{len(seeds)} seeds)"
            elif skipped:
                cell = "not run: data missing" if "data missing" in skipped[-1]["reason"] else "not run"
            else:
                cell = "not run"
            paper = PAPER.get((task, method))
            row += [cell, fmt(task, *paper) if paper else "—"]
            time_row.append(f"{statistics.fmean(r['fit_seconds'] for r in ok) / 60:.1f}" if ok else "—")
        rows.append(row)
        time_rows.append(time_row)

    used = [r for r in records if r.get("status") == "ok" and r.get("task") in args.tasks]
    notes = []
    for task in args.tasks:
        recs = [r for r in used if r["task"] == task]
        if not recs:
            continue
        epochs = sorted({str(r["epochs"] if r["epochs"] is not None else "config's") for r in recs})
        n_train = sorted({r["num_train"] for r in recs})
        n_test = sorted({r["num_test"] for r in recs})
        notes.append(f"{task}: {'/'.join(epochs)} forward-weight epochs, {'/'.join(map(str, n_train))} "
                     f"training images, {'/'.join(map(str, n_test))} test images")
    overrides = sorted({" ".join(r.get("override") or []) for r in used} - {""})
    hosts = sorted({machine_text(m) for r in used if (m := r.get("machine"))})
    note = [f"Ours: mean ± std over {len(seeds)} seed(s) {seeds}; " + "; ".join(notes) + "."]
    if overrides:
        note.append(f"Extra CLI arguments: `{'`, `'.join(overrides)}`.")
    if hosts:
        note.append("Machine: " + "; ".join(hosts) + ".")
    note.append("Paper: Table 1 of Meulemans et al. 2021, full data sets (55,000 training images), "
                "100 epochs (autoencoder 25), 5 seeds; — = not published.")
    time_head = ["method"] + [f"{task} fit minutes/run" for task in args.tasks]
    return "\n".join([
        markdown(header, rows), "", *note, "", "Wall time of `fit` per run (mean over seeds):", "",
        markdown(time_head, time_rows), "",
    ])


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    sys.argv = sys.argv[:1]  # the runs get their CLI arguments explicitly
    records = read_results(args.results) if args.table_only else run_all(args)
    table = make_tables(args, records)
    print(table, flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)
    return table


if __name__ == "__main__":
    main()
