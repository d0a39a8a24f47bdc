"""The benchmark scripts end to end on tiny fake data.

``benchmarks/table1.py``: the table's rows and columns, a task without data, a pair without a config,
``--resume`` after an interruption and ``--table-only``. ``benchmarks/learning_curves.py``: the
records (curves per wake epoch, test at the best checkpoint, schedule, times, diagnostics), the
report and figure, ``--resume``, ``--table-only``, worker processes and a failing run; and the
subset override configs against the examples. ``benchmarks/first_hour.py``: its records, table and
``--resume``."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import write_fake_mnist

from lightning_dfc import FeedbackConfig

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread", "cli_isolation")


def load_table1():
    spec = importlib.util.spec_from_file_location("table1", REPO / "benchmarks" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_examples(folder: Path, stems: list[str]) -> Path:
    """Copies of the given example configs with a short simulation (as in test_configs.py)."""
    folder.mkdir()
    for stem in stems:
        raw = yaml.safe_load((REPO / "examples" / f"{stem}.yaml").read_text())
        init = raw["model"]["init_args"]
        if "dynamics" in init:
            init["dynamics"]["steps"] = 20
            init["updates"]["exclude_non_converged"] = False  # nothing converges in 20 steps
        if "feedback" in init:
            init["feedback"]["pretrain_epochs"] = 1
            init["feedback"]["simulation"]["steps"] = 10
        raw["data"]["init_args"]["batch_size"] = 16
        callbacks = raw["trainer"]["callbacks"]  # only the checkpoint (no reconstruction images)
        raw["trainer"]["callbacks"] = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
        (folder / f"{stem}.yaml").write_text(yaml.safe_dump(raw))
    return folder


def table_rows(table: str) -> dict[str, list[str]]:
    """First Markdown table: {first cell: cells} (header under "method")."""
    rows = {}
    for line in table.split("\n\n")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] and not cells[0].startswith("---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_table1_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table1 = load_table1()
    write_fake_mnist(tmp_path / "data", 48, 16)  # MNIST only: Fashion-MNIST is missing
    examples = short_examples(tmp_path / "examples", [
        "mnist_bp", "fmnist_bp", "fmnist_dfc_ssa_fixed", "mnist_autoencoder_bp",
    ])
    results = tmp_path / "out" / "runs.jsonl"
    output = tmp_path / "out" / "table.md"
    args = [
        "--tasks", "mnist", "fmnist", "mnist_autoencoder",
        "--methods", "bp", "dfc_ssa_fixed",
        "--seeds", "1", "2", "--epochs", "1", "mnist_autoencoder=2", "--val-size", "16",
        "--data-dir", str(tmp_path / "data"), "--examples", str(examples),
        "--results", str(results), "--output", str(output),
    ]
    table = table1.main(args)
    assert output.read_text() == table

    rows = table_rows(table)
    assert rows["method"] == [
        "MNIST test error (%), ours", "paper", "F-MNIST test error (%), ours", "paper",
        "MNIST-autoencoder test loss, ours", "paper",
    ]
    assert list(rows)[1:] == ["BP", "DFC-SSA (fixed)"]
    bp, ssa = rows["BP"], rows["DFC-SSA (fixed)"]
    # two seeds: mean ± sample std of the records' test errors (%), each 100 (1 - test accuracy)
    bp_runs = [r for r in map(json.loads, results.read_text().splitlines())
               if (r["task"], r["method"], r["status"]) == ("mnist", "bp", "ok")]
    assert len(bp_runs) == 2
    for r in bp_runs:
        assert r["value"] == pytest.approx(100 * (1 - r["test_acc"]))
    errors = [r["value"] for r in bp_runs]
    mean = (errors[0] + errors[1]) / 2
    assert bp[0] == f"{mean:.2f} ± {abs(errors[0] - errors[1]) / math.sqrt(2):.2f}"
    assert bp[2] == ssa[2] == "not run: data missing"
    assert bp[1] == "2.08 ± 0.15" and ssa[1] == "—"  # the paper has no DFC-SSA numbers
    assert bp[3] == "10.60 ± 0.34"
    assert " ± " in bp[4] and bp[5] == "0.0942 ± 0.0009"
    assert ssa[0] == ssa[4] == "no published config"  # (here: no config in the examples folder)
    assert "Wall time of `fit` per run" in table

    records = [json.loads(line) for line in results.read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 2 + 2
    assert {r["status"] for r in records} == {"ok", "skipped"}
    for rec in ok:
        assert rec["num_train"] == 32 and rec["num_test"] == 16
        assert rec["epochs"] == (2 if rec["task"] == "mnist_autoencoder" else 1)
        assert rec["best_epoch"] < rec["epochs_run"]
        if rec["task"] == "mnist":
            assert rec["value"] == pytest.approx(100 * (1 - rec["test_acc"]))
        else:
            assert rec["value"] == rec["test_loss"]

    # an existing results file is never overwritten by accident
    with pytest.raises(SystemExit):
        table1.main(args)
    assert "--resume" in capsys.readouterr().err

    # interrupted after the last run: --resume runs only that one again, with the same result
    last = json.loads(results.read_text().splitlines()[-1])
    assert last["status"] == "ok" and last["task"] == "mnist_autoencoder"
    results.write_text("\n".join(results.read_text().splitlines()[:-1]) + "\n")
    capsys.readouterr()
    resumed = table1.main([*args, "--resume"])
    out = capsys.readouterr().out
    running = [line for line in out.splitlines() if line.endswith(": running")]
    assert running == ["[table1] fmnist / bp / seed 1: running",  # skipped runs are retried
                       "[table1] mnist_autoencoder / bp / seed 2: running"]
    again = json.loads(results.read_text().splitlines()[-1])
    assert (again["method"], again["seed"], again["value"]) == (last["method"], last["seed"], last["value"])
    assert table_rows(resumed) == rows

    # the table from the file alone
    only = table1.main(["--table-only", "--results", str(results), "--examples", str(examples),
                        "--tasks", "mnist", "fmnist", "mnist_autoencoder", "--methods", "bp", "dfc_ssa_fixed"])
    assert only == resumed

    # resuming with other settings is refused
    with pytest.raises(SystemExit, match="was run with"):
        table1.main([*args[:-4], "--results", str(results), "--resume", "--val-size", "8"])


@pytest.mark.parametrize("bad, message", [
    (["--tasks", "cifar"], "unknown 'cifar'"),
    (["--methods", "dfc", "dfc"], "repeated"),
    (["--epochs", "0"], "positive integer or 'paper'"),
    (["--epochs", "toy=3"], "unknown task 'toy'"),
    (["--val-size", "0"], "--val-size"),
    (["--table-only", "--results", "missing.jsonl"], "does not exist"),
    (["--data-dir", "no/such/folder"], "is not a folder"),
])
def test_table1_bad_arguments(bad: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_table1().main(bad)
    assert message in capsys.readouterr().err


def test_table1_epochs_option() -> None:
    table1 = load_table1()
    tasks = list(table1.TASKS)
    assert table1.parse_epochs(["7"], tasks) == dict.fromkeys(tasks, 7)
    assert table1.parse_epochs(["paper", "mnist=2"], tasks) == {
        "mnist": 2, "fmnist": None, "mnist_autoencoder": None, "mnist_train": None}


# ------------------------------------------------------------------------------------ learning_curves.py
def load_learning_curves():
    spec = importlib.util.spec_from_file_location("learning_curves", REPO / "benchmarks" / "learning_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_subset(folder: Path, stems: list[str], val_size: int = 16) -> Path:
    """Override configs as in benchmarks/subset/, for the fake data: a small validation split and
    one pre-training epoch."""
    folder.mkdir()
    for stem in stems:
        raw = yaml.safe_load((REPO / "benchmarks" / "subset" / f"{stem}.yaml").read_text())
        raw["data"]["init_args"]["val_size"] = val_size
        if "model" in raw:
            raw["model"]["init_args"]["feedback"]["pretrain_epochs"] = 1
        (folder / f"{stem}.yaml").write_text(yaml.safe_dump(raw))
    return folder


def test_learning_curves_end_to_end_resume_and_table_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lc = load_learning_curves()
    write_fake_mnist(tmp_path / "data", 48, 16)
    stems = ["mnist_bp", "mnist_dfc", "mnist_autoencoder_bp"]
    examples = short_examples(tmp_path / "examples", stems)
    subset = short_subset(tmp_path / "subset", stems)
    results, output, figure = tmp_path / "out" / "runs.jsonl", tmp_path / "out" / "lc.md", tmp_path / "fig" / "lc.png"
    keep = tmp_path / "runs"
    args = [
        "--rows", "bp", "dfc", "autoencoder_bp", "--seeds", "1", "--epochs", "2", "--jobs", "0",
        "--diagnostics", "--diagnostic-metrics", "condition_2", "bp", "h", "--diagnostic-samples", "4",
        "--data-dir", str(tmp_path / "data"), "--examples", str(examples), "--subset-dir", str(subset),
        "--keep-runs", str(keep), "--results", str(results), "--output", str(output), "--figure", str(figure),
    ]
    report = lc.main(args)
    assert output.read_text() == report
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = {r["row"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert list(records) == ["bp", "dfc", "autoencoder_bp"]
    for row, rec in records.items():
        assert rec["status"] == "ok", rec.get("reason")
        assert (rec["num_train"], rec["num_val"], rec["num_test"], rec["batches_per_epoch"]) == (32, 16, 16, 2)
        assert rec["epochs"] == 2 and rec["seed"] == 1 and rec["config"] == f"mnist_{row}.yaml"
        for key in ("curve_val_acc", "curve_val_loss", "curve_train_loss", "curve_train_acc"):
            assert len(rec[key]) == 2 + 1  # wake epochs 0 (untrained), 1, 2
        assert rec["curve_train_loss"][0] is None and all(v is not None for v in rec["curve_val_loss"])
        assert 0 <= rec["best_wake_epoch"] <= 2
        assert rec["best_val_loss"] == rec["curve_val_loss"][rec["best_wake_epoch"]]
        assert set(rec["seconds"]) >= {"pretrain", "sleep", "wake", "validation", "other", "fit", "test"}
        assert rec["sleep_val_changed"] == []
        assert rec["machine"]["threads"] == 1 and rec["finished"]
    bp, dfc, ae = records["bp"], records["dfc"], records["autoencoder_bp"]
    assert bp["test_error"] == pytest.approx(100 * (1 - bp["test_acc"]))
    assert bp["best_val_acc"] == bp["curve_val_acc"][bp["best_wake_epoch"]]
    assert ae["test_acc"] is None and ae["curve_val_acc"] == [None] * 3 and ae["monitor"] == "val_loss"
    assert bp["pretrain_epochs"] == 0 and bp["diagnostics"] is None and bp["seconds"]["sleep"] == 0
    # DFC: 1 pre-training epoch + 2 x (1 sleep, wake, 2 sleep); the paper's updates would need more
    assert (dfc["pretrain_epochs"], dfc["sleep_before"], dfc["sleep_after"]) == (1, 1, 2)
    assert dfc["lightning_epochs_run"] == 1 + 2 * 4
    # the copy's batch size, 16: a paper epoch of 55,000 images is 3,438 batches, round(3438 / 2) here
    assert dfc["paper_pretrain_epochs"] == 1 and "3438 batches are 1719" in dfc["pretrain_note"]
    assert dfc["seconds"]["pretrain"] > 0 and dfc["seconds"]["sleep"] > 0
    assert {"condition_2", "angle_bp", "angle_h", "control_loss", "condition_2_ss"} <= set(dfc["diagnostics"])
    assert all(len(v) == 3 and v[0] is None and v[2] is not None for v in dfc["diagnostics"].values())
    assert dfc["wake_stats"]["steps"][1] > 0 and len(dfc["wake_stats"]["excluded"]) == 3
    assert "Wake-phase simulation" in report
    # the untrained network's validation (computed before fit) is what the pre-training epoch logged
    metrics = lc.read_metrics(next(keep.glob("dfc_seed1/dfc/version_*/metrics.csv")))
    assert metrics[0]["phase"] == 0 and metrics[0]["val_loss"] == pytest.approx(dfc["curve_val_loss"][0], rel=1e-5)
    assert metrics[0]["val_acc"] == pytest.approx(dfc["curve_val_acc"][0])

    assert "| BP | `mnist_bp` |" in report and "| DFC | `mnist_dfc` |" in report
    assert "2.08 ± 0.15 | 1.83 ± 0.11 | 1.83 (98.17 % acc.) |" in report  # BP: DFC paper, Strong-DFC, README
    assert "| Autoencoder BP | `mnist_autoencoder_bp` |" in report and "0.0942 ± 0.0009" in report
    assert "Validation accuracy (%) after wake epoch k" in report and "| row | 0 | 1 | 2 |" in report
    assert "Wall time per run" in report and "Diagnostics (ConditionMonitor" in report
    assert "32 train / 16 validation / 16 test images" in report

    # an existing results file is never overwritten by accident
    with pytest.raises(SystemExit):
        lc.main(args)
    assert "--resume" in capsys.readouterr().err

    # interrupted during the last run: --resume runs only that one again, with the same result
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n")
    resumed = lc.main([*args, "--resume"])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "running" in line] == [
        line for line in out.splitlines() if line.startswith("[learning_curves] autoencoder_bp / seed 1: running")]
    assert out.count("skipped") == 2
    again = json.loads(results.read_text().splitlines()[-1])
    assert again["curve_val_loss"] == json.loads(lines[-1])["curve_val_loss"]
    assert again["test_loss"] == json.loads(lines[-1])["test_loss"]

    # the outputs from the file alone
    figure.unlink()
    only = lc.main(["--table-only", "--results", str(results), "--figure", str(figure)])
    assert only == resumed and figure.read_bytes()[:4] == b"\x89PNG"

    # resuming with other settings is refused
    with pytest.raises(SystemExit, match="was run with"):
        lc.main([*args, "--resume", "--epochs", "3"])


class SteppingClock:
    """``time`` for the benchmark module: ``time()`` advances by ``step`` per call, the rest real."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step
        self.perf_counter, self.sleep = time.perf_counter, time.sleep

    def time(self) -> float:
        now, self.now = self.now, self.now + self.step
        return now


def test_learning_curves_full_scale_stops_and_resumes_at_wake_epochs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--scale full: the example configs as they are; each wake epoch appends a ``running`` record;
    --stop-after stops a run at a wake-epoch end and starts no new ones; --resume continues it from
    its checkpoint, and its curve and phase times span both processes."""
    lc = load_learning_curves()
    write_fake_mnist(tmp_path / "data", 48, 16)
    examples = short_examples(tmp_path / "examples", ["mnist_bp", "mnist_dfc"])
    results, keep = tmp_path / "full.jsonl", tmp_path / "runs"
    common = ["--scale", "full", "--rows", "bp", "dfc", "--seeds", "1", "--epochs", "3", "--jobs", "0",
              "--data-dir", str(tmp_path / "data"), "--examples", str(examples), "--keep-runs", str(keep),
              "--results", str(results)]
    override = ["--override", "--data.init_args.val_size=16"]
    with pytest.raises(SystemExit):
        lc.main(common[:-4] + ["--results", str(results)] + override)  # full scale without --keep-runs
    assert "--keep-runs" in capsys.readouterr().err

    # the clock reads 0 at the start (deadline 10), 6 before the first run, 12 after its first wake epoch
    monkeypatch.setattr(lc, "time", SteppingClock(6.0))
    report = lc.main([*common, "--stop-after", "10", *override])
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "bp / seed 1: stopped after Lightning epoch 0" in out and "runs not started are left" in out
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["row"], r["status"], r["wake_epoch"], r["scale"]) for r in records] == [("bp", "running", 1, "full")]
    assert records[0]["segment"] == 0
    # the running record's accuracy is the one Lightning's CSV logger wrote for that validation
    logged = [float(row["val_acc"]) for row in csv.DictReader(
        (keep / "bp_seed1" / "bp" / "version_0" / "metrics.csv").open()) if row.get("val_acc")]
    assert records[0]["val_acc"] == pytest.approx(logged[-1])
    assert "Runs in progress" in report and "| BP | 1 | 1 | 3 |" in report
    assert "| BP | `mnist_bp` | in progress | in progress |" in report
    assert (keep / "bp_seed1" / "bp" / "version_0" / "checkpoints" / "last.ckpt").is_file()

    lc.main([*common, "--resume", *override])
    out = capsys.readouterr().out
    assert "bp / seed 1: resuming after Lightning epoch 0" in out
    records = [json.loads(line) for line in results.read_text().splitlines()]
    bp = [r for r in records if r["row"] == "bp"]
    assert [r["status"] for r in bp] == ["running", "running", "running", "ok"]
    assert [r["wake_epoch"] for r in bp[:3]] == [1, 2, 3] and [r["segment"] for r in bp[:3]] == [0, 1, 1]
    final = bp[-1]
    assert final["resumed_from_epoch"] == 0 and final["segments"] == 2 and final["scale"] == "full"
    # the curve spans both processes: the wake-epoch records' validation is the curve's
    assert final["curve_val_acc"][1:] == pytest.approx([r["val_acc"] for r in bp[:3]])
    assert final["curve_val_loss"][1:] == pytest.approx([r["val_loss"] for r in bp[:3]])
    assert (final["num_train"], final["num_val"]) == (32, 16)  # the example's own config, val_size overridden
    # both processes' wake time: more than the first's alone
    first = json.loads((keep / "bp_seed1" / "segment_0.json").read_text())
    assert final["seconds"]["wake"] > first["wake"] > 0
    dfc = [r for r in records if r["row"] == "dfc"]
    assert [r["status"] for r in dfc] == ["running"] * 3 + ["ok"] and "resumed_from_epoch" not in dfc[-1]
    assert dfc[-1]["pretrain_epochs"] == 1 and "pretrain_note" not in dfc[-1]  # the example's as it is
    again = lc.main([*common, "--resume", *override])
    assert capsys.readouterr().out.count("skipped") == 2 and "Runs in progress" not in again


def test_learning_curves_resumes_after_an_epoch_that_did_not_improve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after a wake epoch whose validation did not improve continues from that epoch,
    not from the last improvement: the example configs' ``last.ckpt`` is refreshed after every
    epoch (Lightning's ``save_last`` alone writes it only with a new best checkpoint)."""
    lc = load_learning_curves()
    write_fake_mnist(tmp_path / "data", 48, 16)
    examples = short_examples(tmp_path / "examples", ["mnist_bp"])
    results, keep = tmp_path / "full.jsonl", tmp_path / "runs"
    common = ["--scale", "full", "--rows", "bp", "--seeds", "1", "--epochs", "3", "--jobs", "0",
              "--data-dir", str(tmp_path / "data"), "--examples", str(examples), "--keep-runs", str(keep),
              "--results", str(results)]
    # lr 0: the validation never improves after the first epoch
    override = ["--override", "--data.init_args.val_size=16", "--model.init_args.forward_optimizer.init_args.lr=0"]
    # the clock reads 0 at the start (deadline 15), 6 before the run, 12 and 18 after its wake epochs
    monkeypatch.setattr(lc, "time", SteppingClock(6.0))
    lc.main([*common, "--stop-after", "15", *override])
    monkeypatch.undo()
    assert "bp / seed 1: stopped after Lightning epoch 1" in capsys.readouterr().out
    run = keep / "bp_seed1"
    checkpoints = run / "bp" / "version_0" / "checkpoints"
    assert lc.torch_load_epoch(str(checkpoints / "last.ckpt")) == 1
    assert [p.name for p in checkpoints.glob("wake_epoch=*.ckpt")] == ["wake_epoch=1.ckpt"]  # the best: wake epoch 1
    lc.main([*common, "--resume", *override])
    assert "bp / seed 1: resuming after Lightning epoch 1" in capsys.readouterr().out
    bp = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["status"], r.get("wake_epoch")) for r in bp] == [("running", 1), ("running", 2), ("running", 3), ("ok", None)]
    final = bp[-1]
    assert final["resumed_from_epoch"] == 1 and final["segments"] == 2
    assert final["curve_val_acc"][1:] == pytest.approx([r["val_acc"] for r in bp[:3]])
    assert final["best_wake_epoch"] == 1  # the config's best checkpoint is still the one tested


def test_learning_curves_worker_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--jobs 2: two runs at once in worker processes; a broken run is recorded as failed."""
    lc = load_learning_curves()
    write_fake_mnist(tmp_path / "data", 48, 16)
    stems = ["mnist_bp", "mnist_dfa"]
    examples = short_examples(tmp_path / "examples", stems)
    broken = yaml.safe_load((examples / "mnist_dfa.yaml").read_text())
    broken["model"]["init_args"]["variant"] = "no_such_variant"
    (examples / "mnist_dfa.yaml").write_text(yaml.safe_dump(broken))
    results = tmp_path / "runs.jsonl"
    report = lc.main(["--rows", "bp", "dfa", "--epochs", "1", "--jobs", "2", "--data-dir", str(tmp_path / "data"),
                      "--examples", str(examples), "--subset-dir", str(short_subset(tmp_path / "subset", stems)),
                      "--results", str(results)])
    assert len([line for line in capsys.readouterr().out.splitlines() if ", pid " in line]) == 2
    records = {r["row"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert records["bp"]["status"] == "ok" and len(records["bp"]["curve_val_acc"]) == 2
    assert records["dfa"]["status"] == "failed" and "no_such_variant" in records["dfa"]["log_tail"]
    assert "| DFA | `mnist_dfa` | failed (1/1 seeds) |" in report and "Failed: dfa / seed 42" in report


def test_subset_configs_match_the_examples() -> None:
    """benchmarks/subset/<example>.yaml: the validation split and the paper's number of feedback
    pre-training updates (430 batches per full-MNIST epoch) on the 5,000 training images left."""
    lc = load_learning_curves()
    assert lc.PAPER_BATCHES == 430 and lc.subset_pretrain_epochs(10, 40) == 108
    assert lc.subset_pretrain_epochs(1, 40) == 11 and lc.subset_pretrain_epochs(15, 40) == 161
    assert lc.subset_pretrain_epochs(20, 157, batch_size=32) == 219  # 20 epochs of 1,719 batches
    for row, spec in lc.ROWS.items():
        example = yaml.safe_load((REPO / "examples" / f"{spec.stem(row)}.yaml").read_text())
        subset = yaml.safe_load((REPO / "benchmarks" / "subset" / f"{spec.stem(row)}.yaml").read_text())
        assert subset["data"] == {"init_args": {"val_size": 1000}}, row
        batch_size = example["data"]["init_args"]["batch_size"]
        batches = math.ceil((6000 - 1000) / batch_size)
        paper = lc.paper_pretrain_epochs(REPO / "examples" / f"{spec.stem(row)}.yaml")
        if paper is None:
            assert set(subset) == {"data"}, row
        else:
            assert set(subset) == {"data", "model"}, row
            assert subset["model"] == {"init_args": {"feedback": {
                "pretrain_epochs": lc.subset_pretrain_epochs(paper, batches, batch_size)}}}, row


@pytest.mark.parametrize("bad, message", [
    (["--rows", "cifar"], "unknown 'cifar'"),
    (["--rows", "bp", "bp"], "repeated"),
    (["--jobs", "-1"], "--jobs"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--figure", "curves.jpg"], ".png"),
    (["--diagnostic-metrics", "magic"], "unknown ['magic']"),
    (["--table-only", "--results", "missing.jsonl"], "does not exist"),
    (["--data-dir", "no/such/folder"], "is not a folder"),
])
def test_learning_curves_bad_arguments(bad: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_learning_curves().main(bad)
    assert message in capsys.readouterr().err


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_lines(gpu, tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "gpu.md"
    assert gpu.main(["--device", "cpu", "--repeats", "1", "--batch-size", "4", "--output", str(out), *args]) == 0
    return out.read_text().splitlines()


def _cosine_gap(line: str) -> float:
    return float(line.split("1 - cos ")[1].split(",")[0])


def test_gpu_script_runs_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/gpu.py --device cpu``: the script itself, its table, the fast numerics' bounds
    on the noise-free wake pass against the CPU's exact, and its refusal without CUDA."""
    gpu = load_script("gpu")
    text = _gpu_lines(gpu, tmp_path, "--configs", "examples/mnist_dfc.yaml", "examples/mnist_strong_dfc.yaml")
    equal = [line for line in text if "equal to the CPU" in line]
    assert len(equal) == 3  # exact: DFC wake and sleep, Strong-DFC single phase wake (no sleep pass)
    fast = [line for line in text if "against the CPU's exact" in line]
    assert [line.split(" | ")[0] for line in fast] == ["| mnist_dfc"]  # the noise-free wake pass only
    cos, norm = fast[0].split("1 - cos ")[1].split(", norm error ")
    assert float(cos) <= 1e-5 and float(norm.split(" ")[0]) <= 1e-3, fast[0]
    for numerics in ("exact", "fast"):
        assert f"| mnist_dfc | {numerics} | epoch | 430 x (wake + 3 sleep)" in "\n".join(text)
        assert f"| mnist_strong_dfc | {numerics} | epoch | 430 x (wake + 0 sleep)" in "\n".join(text)
    import torch

    if not torch.cuda.is_available():
        assert gpu.main([]) == 2
        assert "no CUDA device" in capsys.readouterr().out


class _Device:
    """A stand-in for the GPU on a CPU-only machine: the script's ``model.to(device)`` marks the
    model as moved (and, with ``error``, perturbs its forward weights by that relative amount: a
    device that computes wrongly); ``wake``/``sleep`` of a moved model seed their generator
    differently from the CPU reference's, as another device's generator draws other numbers."""

    def __init__(self, gpu, monkeypatch: pytest.MonkeyPatch, error: float = 0.0) -> None:
        import torch

        build, wake, sleep = gpu.build_model, gpu.wake, gpu.sleep

        def build_model(config, numerics="exact"):
            model = build(config, numerics)
            original_to = model.to

            def to(*args, **kwargs):
                model._moved = True
                if error:
                    with torch.no_grad():
                        for layer in model.dfc_net.layers:
                            layer.weight.mul_(1 + error * torch.randn(layer.weight.shape, dtype=layer.weight.dtype,
                                                                      generator=torch.Generator().manual_seed(5)))
                return original_to(*args, **kwargs)

            model.to = to
            return model

        def other_seed(fn):
            return lambda model, x, y, seed=0: fn(model, x, y, seed + 1234 * getattr(model, "_moved", False))

        monkeypatch.setattr(gpu, "build_model", build_model)
        monkeypatch.setattr(gpu, "wake", other_seed(wake))
        monkeypatch.setattr(gpu, "sleep", other_seed(sleep))


def test_gpu_script_agreement_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a GPU the device comparison is CPU against CPU, so what it would catch is checked
    with a stand-in device: another generator's draws are no difference (the script draws both
    sides' noise from one CPU generator, ``same_noise``), but without that they are one in the
    noisy sleep pass, and a device whose weights are off by 1e-3 is caught in both passes."""
    gpu = load_script("gpu")
    dfc = ("--configs", "examples/mnist_dfc.yaml")
    _Device(gpu, monkeypatch)
    equal = [line for line in _gpu_lines(gpu, tmp_path, *dfc) if "equal to the CPU" in line]
    assert [line.split(" | ")[2] for line in equal] == ["wake", "sleep"]
    assert all(_cosine_gap(line) < 1e-12 for line in equal), equal
    monkeypatch.undo()

    _Device(gpu, monkeypatch)
    monkeypatch.setattr(gpu, "same_noise", lambda seed: contextlib.nullcontext())
    wake, sleep = (line for line in _gpu_lines(gpu, tmp_path, *dfc) if "equal to the CPU" in line)
    assert _cosine_gap(wake) < 1e-12 and _cosine_gap(sleep) > 1e-4, (wake, sleep)  # the wake pass is noise-free
    monkeypatch.undo()

    _Device(gpu, monkeypatch, error=1e-3)
    equal = [line for line in _gpu_lines(gpu, tmp_path, *dfc) if "equal to the CPU" in line]
    assert all(_cosine_gap(line) > 1e-8 for line in equal), equal


def test_side_by_side_table() -> None:
    """``benchmarks/side_by_side.py``: ratios of medians and the epoch-equivalent rows."""
    side = load_script("side_by_side")
    rows = [
        side.row("deep_feedback_control", "DFC", "wake", [10.0, 12.0, 11.0], [0.2, 0.25, 0.3], ours_settings="exact"),
        side.row("deep_feedback_control", "DFC", "sleep", [0.4, 0.5, 0.3], [0.1, 0.1, 0.1], ours_settings="exact"),
        {"agreement": ["DFC", "wake", "exact"], "one_minus_cos": 3e-16},
    ]
    assert rows[0]["ratio"] == pytest.approx(11.0 / 0.25)
    text = side.table(rows, threads=1)
    assert "the authors: 1 thread(s); ours: 1 process(es) of 1 thread(s)" in text
    assert "| DFC | wake | exact | 11.000 | 0.2500 | **44.0x** | 3.0e-16 |" in text
    assert "| DFC | sleep | exact | 0.400 | 0.1000 | **4.0x** | noisy: other draws |" in text
    # 1 wake + 3 sleep: (11 + 1.2) / (0.25 + 0.3)
    assert "| DFC | 1 wake + 3 sleep | exact / exact | 12.200 | 0.5500 | **22.2x** |" in text


def test_profile_pass_prints_the_operators(capsys: pytest.CaptureFixture[str]) -> None:
    profile_pass = load_script("profile_pass")
    profile_pass.main(["dfc_sleep", "sleep", "--numerics", "exact", "--rows", "5"])
    out = capsys.readouterr().out
    assert "one sleep pass:" in out and "exact numerics" in out and "aten::normal_" in out  # Gaussian draws
    profile_pass.main(["dfc_sleep", "sleep", "--rows", "40"])
    out = capsys.readouterr().out
    assert "fast numerics" in out and "aten::normal_" not in out and "aten::random_" in out  # two-point draws
    with pytest.raises(SystemExit):
        profile_pass.main(["sleep"])  # neither a case nor --config


def test_first_hour_records_resume_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/first_hour.py``: a BP row and a DFC row pre-training until aligned, on fake
    MNIST; the record's curve, alignment and pre-training epochs; ``--resume`` runs nothing twice."""
    first_hour = load_script("first_hour")
    write_fake_mnist(tmp_path / "data", 96, 16)
    results = tmp_path / "r.jsonl"
    args = ["--data-dir", str(tmp_path / "data"), "--rows", "bp", "dfc_until95", "--activations", "relu",
            "--epochs", "2", "--hidden", "8", "--val-size", "32", "--results", str(results),
            "--output", str(tmp_path / "t.md")]
    first_hour.main(args)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["row"] for r in records] == ["bp", "dfc_until95"]
    bp, dfc = records
    assert len(bp["curve_val_acc"]) == len(dfc["curve_val_acc"]) == 2
    assert bp["alignment"] == {} and bp["pretrain_epochs"] is None
    # the pre-training stopped where its rule says: Condition 2 (the module's own measure, after
    # each pre-training epoch) reached 0.95, or gained less than pretrain_min_gain, or 200 epochs
    # ran out, and at no earlier epoch
    curve, cfg = dfc["pretrain_condition_2"], FeedbackConfig()
    assert len(curve) == dfc["pretrain_epochs"] and 1 <= dfc["pretrain_epochs"] <= 200

    def stops(k: int) -> bool:
        return curve[k] >= 0.95 or (k > 0 and curve[k] - curve[k - 1] < cfg.pretrain_min_gain) or k == 199

    assert stops(len(curve) - 1) and not any(stops(k) for k in range(len(curve) - 1)), curve
    for when in ("first_wake", "end"):
        a = dfc["alignment"][when]
        assert 0 < a["condition_2"] <= 1 and 0 <= a["angle_q_jt"] <= 180 and 0 <= a["angle_update_bp"] <= 180
    table = (tmp_path / "t.md").read_text()
    assert "| relu | BP, the user's Adam(1e-3) | 1 |" in table
    assert "| relu | DFC, pre-training until aligned (0.95), the papers' optimizer | 1 |" in table
    first_hour.main([*args, "--resume"])
    assert len(results.read_text().splitlines()) == 2
    with pytest.raises(SystemExit):
        first_hour.main([*args, "--epochs", "0"])


def test_first_hour_measure_cost() -> None:
    first_hour = load_script("first_hour")
    text = first_hour.measure_cost(batches_per_epoch=43, repeats=1)
    assert text.startswith("Condition 2 on 128 images: ") and "% of a 43-batch epoch" in text


def test_compare_numerics_welch_table_and_figure(tmp_path: Path) -> None:
    """``benchmarks/compare_numerics.py``: Welch's test against textbook values, and the table and
    figure from two results files of ``learning_curves.py``."""
    compare = load_script("compare_numerics")
    t, df, p = compare.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert t == pytest.approx(-3.6742346, rel=1e-6) and df == pytest.approx(4.0)
    assert p == pytest.approx(0.021311641, rel=1e-5)  # two-sided Student t, 4 degrees of freedom
    t, df, p = compare.welch([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0])  # unequal variances
    assert t == pytest.approx(-2.2514363, rel=1e-6) and df == pytest.approx(5.5207877, rel=1e-6)
    assert p == pytest.approx(0.0691336, rel=1e-5)  # the t density integrated numerically
    assert compare.incomplete_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248, rel=1e-12)

    def record(seed: int, error: float, acc: list[float]) -> dict:
        return {"row": "dfc_fixed", "seed": seed, "status": "ok", "test_error": error,
                "curve_val_acc": acc, "seconds": {"fit": 60.0}}

    exact = [record(42, 12.0, [0.5, 0.8]), record(43, 11.0, [0.5, 0.9]), record(44, 13.0, [0.6, 0.85])]
    fast = [record(42, 12.5, [0.55, 0.8]), record(43, 11.5, [0.5, 0.88]), record(44, 12.0, [0.6, 0.86])]
    paths = []
    for name, records in (("exact", exact), ("fast", fast)):
        paths.append(tmp_path / f"{name}.jsonl")
        paths[-1].write_text("".join(json.dumps(r) + "\n" for r in records))
    text = compare.main(["--exact", str(paths[0]), "--fast", str(paths[1]), "--rows", "dfc_fixed", "dfc",
                         "--output", str(tmp_path / "t.md"), "--figure", str(tmp_path / "f.png")])
    line = next(s for s in text.splitlines() if s.startswith("| DFC (fixed)"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[1:5] == ["42, 43, 44", "42, 43, 44", "12.00 ± 1.00", "12.00 ± 0.50"]
    assert cells[5] == "+0.00" and cells[6] == "1.00"
    assert "(fewer than 2 seeds)" in text  # the dfc row has no runs
    assert (tmp_path / "f.png").stat().st_size > 0


def test_numerics_equivalence_rows(tmp_path: Path) -> None:
    """``benchmarks/numerics_equivalence.py`` on one noise-free and one noisy pass of the paper's
    network: the noise-free fast update keeps its bounds, and over 6 seeds the sleep pass's mean
    and spread are those of a sample of equal draws (loose: 6 seeds)."""
    equivalence = load_script("numerics_equivalence")
    results = tmp_path / "rows.jsonl"
    equivalence.main(["--seeds", "6", "--only", "dfc_ssa", "dfc_sleep", "--results", str(results),
                      "--output", str(tmp_path / "rows.md")])
    rows = {r["row"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert set(rows) == {"DFC-SSA", "DFC sleep"}
    assert rows["DFC-SSA"]["one_minus_cos"] <= 1e-5 and rows["DFC-SSA"]["norm_error"] <= 1e-3
    sleep = rows["DFC sleep"]
    assert sleep["seeds"] == 6 and sleep["mean_error_se"] < 3.0
    assert 0.6 < sleep["spread_ratio"][0] <= sleep["spread_ratio"][1] < 1.6
    assert "| DFC sleep | 6 |" in (tmp_path / "rows.md").read_text()
    equivalence.main(["--seeds", "6", "--resume", "--results", str(results), "--only", "dfc_ssa"])
    assert len(results.read_text().splitlines()) == 2  # resumed: nothing run again
    equivalence.main(["--seeds", "4", "--resume", "--results", str(results), "--only", "dfc_ssa", "dfc_sleep",
                      "--set-back", "noise"])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["row"] for r in rows[2:]] == ["DFC sleep (fast, noise as exact)"]  # noisy rows only
    assert len(rows[2]["mean_error_se_per_tensor"]) == len(rows[2]["relative_mean_difference"]) > 0


def test_full_epoch_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/full_epoch.py``: one real run of an example config (fast numerics) through the
    CLI, its feedback pre-training timed apart from the wake epoch and its sleep epochs."""
    write_fake_mnist(tmp_path / "data", n_train=300, n_test=20)
    full_epoch = load_script("full_epoch")
    results = tmp_path / "epoch.jsonl"
    full_epoch.main(["--config", str(REPO / "examples" / "mnist_dfc.yaml"), "--data-dir", str(tmp_path / "data"),
                     "--val-size", "44", "--batch-size", "64", "--results", str(results)])
    record = json.loads(results.read_text())
    assert record["numerics"] == "fast" and record["train_batches_per_epoch"] == 4  # 256 images, batch 64
    phases = [p for p, _ in record["epoch_phases"]]
    assert phases.count("wake") == 1 and phases.count("sleep") == 3  # 1 before + extra_fb_epochs 2
    assert record["pretrain_epoch_seconds"] > 0 and record["epoch_with_sleep_seconds"] > 0
    assert record["phase_epochs"]["pretrain"] == 10


def test_reference_margins_levers_against_the_authors(tmp_path: Path) -> None:
    """``benchmarks/reference_margins.py``: the exact column is the reference tests' agreement, each
    fast lever alone and the fast preset keep the fast bounds, and the early stop stops early."""
    margins = load_script("reference_margins")
    text = margins.main(["--output", str(tmp_path / "margins.md")])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "strong_dfc_ss_wake" in rows and "dfc_sleep" not in rows  # noisy cases are left out
    for case, line in rows.items():
        if case == "case" or case.startswith("---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        values = [tuple(float(v) for v in cell.split(" / ")) for cell in cells]
        assert values[0][0] <= 1e-9 and values[0][1] <= 1e-6, line  # exact
        for cos, norm, _ in values[1:]:
            assert cos <= 1e-5 and norm <= 1e-3, line
    dfc = [c.strip() for c in rows["dfc"].strip("|").split("|")[1:]]
    assert int(dfc[0].split(" / ")[2]) == 999 and int(dfc[1].split(" / ")[2]) < 100  # early stop


def test_levers_rows(tmp_path: Path) -> None:
    """``benchmarks/levers.py``: exact, fast and fast with each lever set back, per pass; setting a
    lever back really reaches the simulation (float64 and Gaussian noise cost time, measured as a
    ratio to fast, which is 1 by definition)."""
    levers = load_script("levers")
    text = levers.main(["--passes", "DFC sleep", "--repeats", "1", "--output", str(tmp_path / "levers.md")])
    rows = [line for line in text.splitlines() if line.startswith("| DFC sleep")]
    assert [r.split(" | ")[1] for r in rows] == ["exact", "fast", "fast, dtype as exact", "fast, noise as exact",
                                                 "fast, linear_sleep as exact"]
    assert rows[1].endswith("| 1.00 |")
    model = levers.set_back(levers.module("dfc_sleep", "fast"), ["noise"])
    assert model.dfc_feedback_config.simulation.noise == "gaussian" and model.dfc_dynamics.noise == "gaussian"
    assert model.dfc_feedback_config.simulation.dtype == "float32"  # the other levers stay fast


def test_ab_revision_imports_an_old_package_beside_todays() -> None:
    """``benchmarks/ab_revision.py``: the committed package (HEAD) as the old side, today's working
    tree as the new one, both timed on the same pass."""
    ab = load_script("ab_revision")
    [(label, old, new)] = ab.main(["--old", "HEAD", "--passes", "DFC sleep", "--repeats", "1"])
    assert label == "DFC sleep" and old > 0 and new > 0
    assert any(name.startswith("lightning_dfc_") for name in sys.modules)


def test_compile_step_eager_runs() -> None:
    """``benchmarks/compile_step.py`` (eager only here: compiling takes long): the step advances."""
    compile_step = load_script("compile_step")
    step, (dv, dr) = compile_step.make(batch=4)
    new_dv, new_dr = step(dv, dr, 0.1)
    assert [t.shape for t in new_dv] == [(4, k) for k in compile_step.SIZES] and float(new_dv[0].abs().sum()) > 0
    assert compile_step.main(["--steps", "2", "--repeats", "1", "--no-compile"])["eager"] > 0


def test_late_training_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/late_training.py``: fast against exact wake updates on a checkpoint's training
    batches. With untrained forward weights and feedback near the weight product (as after
    pre-training) the fast pass stops early and stays within the fast numerics' bounds."""
    import torch

    late = load_script("late_training")
    gpu = load_script("gpu")
    write_fake_mnist(tmp_path / "data", 32, 8)
    module = gpu.build_model(REPO / "examples" / "mnist_dfc.yaml", "exact")
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict()}, checkpoint)
    worst = late.main(["--checkpoint", str(checkpoint), "--data-dir", str(tmp_path / "data"),
                       "--config", str(REPO / "examples" / "mnist_dfc.yaml"), "--batches", "1", "--batch-size", "16"])
    out = capsys.readouterr().out
    steps = out.split("steps fast ")[1].split(",")[0]
    assert int(steps) < 100 and "exact 999" in out
    assert worst["one_minus_cos"] <= 1e-5 and worst["norm"] <= 1e-3


def test_kernels_reports_every_timing() -> None:
    """``benchmarks/kernels.py``: each timing measured and positive, the half-batch passes timed
    on both batch sizes (the values themselves are the machine's, not asserted)."""
    kernels = load_script("kernels")
    report = kernels.main(["--repeats", "20", "--pass-repeats", "1"])
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["gemm_us"] > 0 and report["tanh_us"] > 0 and report["sigmoid_us"] > 0
    assert len(report["gemm_pair_us"]) == 2 and min(report["gemm_pair_us"]) > 0
    assert set(report["half_batch_ms"]) == {"DFC sleep", "DFC wake"}
    assert all(full > 0 and half > 0 for full, half in report["half_batch_ms"].values())
    assert set(report["gloo_us"]) == {"barrier", "all_reduce_1", "all_reduce_7690"}
    assert all(t > 0 for t in report["gloo_us"].values())
