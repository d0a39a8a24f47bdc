"""``benchmarks/table1.py`` end to end on tiny fake data: the table's rows and columns, a task
without data, a pair without a config, ``--resume`` after an interruption and ``--table-only``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from helpers import write_fake_mnist

REPO = Path(__file__).resolve().parents[1]
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
    assert " ± " in bp[0]  # two seeds: mean ± std of the test error in %
    assert 0 <= float(bp[0].split(" ± ")[0]) <= 100
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
