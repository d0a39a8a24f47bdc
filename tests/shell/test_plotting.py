"""``lightning-dfc plot``: Fig. 3 panels and arbitrary metrics from CSVLogger logs."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402

from lightning_dfc.shell import plotting  # noqa: E402
from lightning_dfc.shell.cli import build_cli, main  # noqa: E402
from lightning_dfc.shell.plotting import (  # noqa: E402
    FIG3_PANELS,
    fig3_figure,
    find_runs,
    load_run,
    plot_metrics,
    plot_runs,
    series,
)

ROOT = Path(__file__).resolve().parents[2]
FIG3_PIXELS = (round(plotting.FIG3_SIZE[1] * plotting.FIG_DPI), round(plotting.FIG3_SIZE[0] * plotting.FIG_DPI))


def write_csv(path: Path, rows: list[dict[str, float]]) -> Path:
    """A metrics.csv as CSVLogger writes it: the union of the keys as header, blanks elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def trained_run(root: Path, column: str = "wake_epoch") -> Path:
    """A trained-feedback run: 2 pre-training epochs, then (sleep, wake, sleep) per wake epoch.
    Wake epochs log every metric; sleep epochs log the sleep variants; validation rows apart.
    ``column``: ``wake_epoch`` (from 1; 0 in pre-training), or the 0-based ``forward_epoch`` of
    logs written before it (-1 in pre-training)."""
    shift = 1 if column == "wake_epoch" else 0
    rows, epoch = [], 0
    for _ in range(2):
        rows.append({"epoch": epoch, "phase": 0, column: shift - 1, "diag/sleep/condition_2": 0.5 + 0.1 * epoch})
        rows.append({"epoch": epoch, "val_loss": 3.0})
        epoch += 1
    for fe in range(3):
        for phase in (1, 2, 1):
            row = {"epoch": epoch, "phase": phase, column: fe + shift, "step": 10 * epoch}
            if phase == 2:
                row.update({"diag/condition_1": 0.3, "diag/condition_2": 0.9 + 0.01 * fe, "diag/stability": -0.4,
                            "diag/angle_mn": 10.0 - fe, "diag/angle_gn": 20.0 - fe, "diag/angle_ssa": 1.0,
                            "diag/angle_bp": 30.0, "train_loss_epoch": 2.0 - 0.1 * fe})
            else:
                row["diag/sleep/condition_2"] = 0.8 + 0.01 * epoch
            rows.append(row)
            rows.append({"epoch": epoch, "val_loss": 2.0 - 0.1 * fe})
            epoch += 1
    return write_csv(root / ("toy_dfc" if column == "wake_epoch" else "toy_dfc_old") / "version_0" / "metrics.csv", rows)


def dfa_run(root: Path) -> Path:
    """A DFA-like run: one Lightning epoch per wake epoch, no wake_epoch column, only some
    diagnostics (no Conditions, no SSA alignment), one NaN."""
    rows = []
    for e in range(4):
        rows.append({"epoch": e, "phase": 2, "diag/angle_mn": 60.0 + e, "diag/angle_gn": math.nan if e == 2 else 70.0,
                     "train_loss_epoch": 3.0})
    return write_csv(root / "toy_dfa" / "version_3" / "metrics.csv", rows)


@pytest.fixture()
def logs(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    trained_run(root)
    dfa_run(root)
    return root


def assert_figure_files(paths: list[Path], shape: tuple[int, int] | None = FIG3_PIXELS) -> None:
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000, p
    png = next(p for p in paths if p.suffix == ".png")
    image = mpimg.imread(png)
    if shape is not None:
        assert image.shape[:2] == shape
    assert image.std() > 0  # not a blank image
    assert next(p for p in paths if p.suffix == ".pdf").read_bytes().startswith(b"%PDF")


# --------------------------------------------------------------------------------------------
# reading


def test_find_runs_accepts_files_log_dirs_and_parents(logs: Path) -> None:
    dfc_csv = logs / "toy_dfc" / "version_0" / "metrics.csv"
    assert find_runs(dfc_csv) == [dfc_csv]
    assert find_runs(dfc_csv.parent) == [dfc_csv]
    assert find_runs(logs) == sorted(logs.rglob("metrics.csv")) and len(find_runs(logs)) == 2
    with pytest.raises(FileNotFoundError, match="nope"):
        find_runs(logs / "nope")
    (logs / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.csv in or below .*empty"):
        find_runs(logs / "empty")


def test_series_maps_epochs_to_wake_epochs(logs: Path, tmp_path: Path) -> None:
    run = load_run(logs / "toy_dfc" / "version_0")
    assert run.label == "toy_dfc"
    xs, ys = series(run, "diag/condition_2")
    assert xs == [1, 2, 3] and ys == pytest.approx([0.9, 0.91, 0.92])
    # sleep values: pre-training at x = 0 (the last one), then the last sleep epoch of each cycle
    xs, ys = series(run, "diag/sleep/condition_2")
    assert xs == [0, 1, 2, 3] and ys == pytest.approx([0.6, 0.84, 0.87, 0.90])
    old = load_run(trained_run(tmp_path / "old", column="forward_epoch"))  # a log from before wake_epoch
    assert series(old, "diag/sleep/condition_2") == (xs, ys)
    xs, ys = series(run, "diag/sleep/condition_2", reduce="mean")
    assert ys[1] == pytest.approx((0.82 + 0.84) / 2)
    xs, _ = series(run, "diag/condition_2", x="epoch")
    assert xs == [3, 6, 9]
    xs, _ = series(run, "diag/condition_2", x="step")
    assert xs == [30, 60, 90]
    assert series(run, "diag/not_there") == ([], [])
    # no wake_epoch column: the Lightning epoch + 1; a NaN stays (a gap in the line)
    dfa = load_run(logs / "toy_dfa" / "version_3" / "metrics.csv")
    xs, ys = series(dfa, "diag/angle_gn")
    assert xs == [1, 2, 3, 4] and math.isnan(ys[2])


# --------------------------------------------------------------------------------------------
# the Fig. 3 figure


def test_plot_runs_writes_png_and_pdf_of_six_panels(logs: Path, tmp_path: Path) -> None:
    paths = plot_runs([logs], tmp_path / "out" / "fig3")
    assert [p.name for p in paths] == ["fig3.png", "fig3.pdf"]
    assert_figure_files(paths)


def test_output_paths(tmp_path: Path) -> None:
    out = plotting._output_paths
    assert out(tmp_path / "a" / "fig3", ("png", "pdf"), "fig3") == [tmp_path / "a" / "fig3.png", tmp_path / "a" / "fig3.pdf"]
    assert out(tmp_path, ("png",), "fig3") == [tmp_path / "fig3.png"]  # an existing directory
    assert out(f"{tmp_path / 'new'}/", ("png",), "fig3") == [tmp_path / "new" / "fig3.png"]
    assert out(tmp_path / "x.png", ("png", "pdf"), "fig3") == [tmp_path / "x.png", tmp_path / "x.pdf"]
    assert out(tmp_path / "run.v2", ("png",), "fig3") == [tmp_path / "run.v2.png"]  # not a format suffix


def test_missing_metrics_leave_runs_out_of_panels(logs: Path) -> None:
    fig = fig3_figure([logs / "toy_dfc" / "version_0", logs / "toy_dfa"], labels=["DFC", "DFA"])
    axes = fig.axes[:6]
    assert [ax.get_title(loc="left").split()[0] for ax in axes] == [p.letter for p in FIG3_PANELS]
    drawn = {p.letter: sorted(line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_"))
             for p, ax in zip(FIG3_PANELS, axes)}
    assert drawn == {"A": ["DFC"], "B": ["DFA", "DFC"], "C": ["DFC"], "D": ["DFA", "DFC"], "E": ["DFC"], "F": ["DFC"]}
    # the stability panel has its zero line
    assert any(list(line.get_ydata()) == [0, 0] for line in axes[4].get_lines())
    # a run that logged no diagnostics at all: every panel says so, and nothing crashes
    fig = fig3_figure([logs / "toy_dfa"], labels=["DFA"])
    texts = {p.letter: [t.get_text() for t in ax.texts] for p, ax in zip(FIG3_PANELS, fig.axes)}
    assert texts["A"] == texts["C"] == texts["E"] == texts["F"] == [plotting.DIAGNOSTICS_MISSING]
    assert "ConditionMonitor" in plotting.DIAGNOSTICS_MISSING
    assert texts["B"] == texts["D"] == []


def test_condition_2_falls_back_to_sleep_values(tmp_path: Path) -> None:
    rows = [{"epoch": e, "wake_epoch": e // 2 + 1, "diag/sleep/condition_2": 0.5 + 0.1 * e} for e in range(4)]
    write_csv(tmp_path / "sleep_only" / "version_0" / "metrics.csv", rows)
    fig = fig3_figure([tmp_path / "sleep_only"], labels=["DFC"])
    (line,) = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert line.get_label() == "DFC (sleep)"
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == pytest.approx([0.6, 0.8])


def test_labels_must_match_the_runs(logs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        plot_runs([logs], tmp_path / "fig", labels=["only one"])


def test_same_names_are_labelled_with_their_versions(logs: Path, tmp_path: Path) -> None:
    write_csv(logs / "toy_dfc" / "version_1" / "metrics.csv", [{"epoch": 0, "diag/angle_mn": 5.0}])
    fig = fig3_figure([logs])
    labels = sorted(line.get_label() for line in fig.axes[1].get_lines() if not line.get_label().startswith("_"))
    assert labels == ["toy_dfa/version_3", "toy_dfc/version_0", "toy_dfc/version_1"]


def test_plot_metrics_with_patterns(logs: Path, tmp_path: Path) -> None:
    keys = ["val_loss", "diag/angle_*", "not/logged"]  # the pattern gives bp, gn, mn, ssa: 6 panels
    (png,) = plot_metrics([logs], keys, tmp_path / "m", formats=("png",))
    assert png == tmp_path / "m.png" and png.stat().st_size > 1000
    assert mpimg.imread(png).shape[:2] == (round((3.4 * 2 + 0.6) * 150), round(4.4 * 3 * 150))


def test_missing_matplotlib_is_explained(logs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install lightning-dfc\[plots\]"):
        plot_runs([logs], tmp_path / "fig")


# --------------------------------------------------------------------------------------------
# the command


def test_cli_plot_subcommand(logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["plot", str(logs / "toy_dfc" / "version_0"), "--output", str(tmp_path / "fig"), "--fig3"])
    assert_figure_files([tmp_path / "fig.png", tmp_path / "fig.pdf"])
    assert str(tmp_path / "fig.png") in capsys.readouterr().out
    main(["plot", str(logs / "toy_dfc" / "version_0"), "--output", str(tmp_path / "curves")])
    assert_figure_files([tmp_path / "curves.png", tmp_path / "curves.pdf"], shape=None)


def write_run(folder: Path, pretrain_epochs: int = 3, wake_epochs: int = 2) -> Path:
    """A metrics.csv as DFCModule writes it (pre-training, then per wake epoch a sleep and a wake
    epoch), without any diagnostics."""
    folder.mkdir(parents=True)
    columns = ["epoch", "step", "phase", "wake_epoch", "pretrain/condition_2", "train_loss_epoch", "val_acc", "val_loss"]
    rows, epoch = [], 0
    for k in range(pretrain_epochs):
        rows.append({"epoch": epoch, "step": epoch, "phase": 0, "wake_epoch": 0, "pretrain/condition_2": 0.3 + 0.1 * k})
        epoch += 1
    for w in range(1, wake_epochs + 1):
        rows.append({"epoch": epoch, "step": epoch, "phase": 1, "wake_epoch": w})
        rows.append({"epoch": epoch + 1, "step": epoch + 1, "phase": 2, "wake_epoch": w, "train_loss_epoch": 1.0 / w})
        rows.append({"epoch": epoch + 1, "step": epoch + 1, "val_acc": 0.8 + 0.05 * w, "val_loss": 0.5 / w})
        epoch += 2
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_the_default_plot_shows_what_the_run_logged(logs: Path, tmp_path: Path) -> None:
    """Without diagnostics: the learning curves per wake epoch (numbered as the console numbers
    them, one marked point per epoch, ticks on whole epochs) and Condition 2 per pre-training
    epoch; with them, the Fig. 3 panels too."""
    run = write_run(tmp_path / "run" / "version_0")
    fig = plotting.run_figure([run])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title(loc="left") for ax in axes]
    assert titles == ["Validation accuracy", "Validation loss", "Training loss", "Feedback pre-training: Condition 2"]
    for ax in axes[:3]:
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [1, 2] and line.get_marker() == "o"
        assert [t for t in ax.get_xticks()] == [1, 2] and ax.get_xlabel() == "wake epoch"
    assert list(axes[0].get_lines()[0].get_ydata()) == pytest.approx([0.85, 0.9])
    assert list(axes[3].get_lines()[0].get_xdata()) == [1, 2, 3] and axes[3].get_xlabel() == "pre-training epoch"
    with_diagnostics = [ax.get_title(loc="left") for ax in plotting.run_figure([logs / "toy_dfc" / "version_0"]).axes
                        if ax.get_visible()]
    assert with_diagnostics[:3] == titles[:3] and [t.split()[0] for t in with_diagnostics[-6:]] == list("ABCDEF")


def test_a_tensorboard_run_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "tb" / "version_0"
    run.mkdir(parents=True)
    (run / "events.out.tfevents.1.host").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(tmp_path / "tb"), "--output", str(tmp_path / "fig")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "TensorBoard event files and no metrics.csv" in err and "CSVLogger" in err


def test_cli_plot_reads_sys_argv(logs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-dfc", "plot", str(logs), "-o", str(tmp_path / "loss"),
                                      "--metrics", "val_loss", "--formats", "png", "--x", "epoch",
                                      "--labels", "a", "b"])
    main()
    assert (tmp_path / "loss.png").is_file() and not (tmp_path / "loss.pdf").exists()


def test_cli_plot_bad_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_run"
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(missing), "--output", str(tmp_path / "fig")])
    assert exc.value.code == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        plot_runs([missing], tmp_path / "fig")


# --------------------------------------------------------------------------------------------
# end to end: a tiny toy run with the Fig. 3 monitor, then its figure


@pytest.fixture()
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_toy_run_with_monitor_then_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _one_thread) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    cli = build_cli([
        "--config", str(ROOT / "examples" / "toy_dfc.yaml"),
        f"--trainer.callbacks+={ROOT / 'examples' / 'fig3_monitor.yml'}",
        "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--data.num_train=32", "--data.num_val=16", "--data.num_test=16", "--data.teacher_hidden=[8]",
        "--data.batch_size=16", "--model.init_args.dynamics.steps=20",
        "--model.init_args.feedback.simulation.steps=10", "--model.init_args.feedback.pretrain_epochs=1",
    ], run=False)
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert "ConditionMonitor" in names
    assert any(getattr(c, "monitor", None) == "val_loss" for c in cli.trainer.callbacks)  # kept the config's
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    run = load_run(tmp_path / "logs" / "toy_dfc")
    for panel in FIG3_PANELS:
        assert run.has(panel.keys[0]), panel.keys[0]
    assert series(run, "diag/condition_2")[0] == [1]  # the one wake epoch
    (png,) = plot_runs([tmp_path / "logs"], tmp_path / "fig3", formats=("png",))
    assert mpimg.imread(png).shape[:2] == FIG3_PIXELS
