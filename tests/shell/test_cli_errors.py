"""A bad value anywhere in a config gives one short ``error:`` line naming the value and the fix,
and exit status 2, like a key typo (issue 13); the traceback only on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_dfc.shell.cli import TRACEBACK_ENV, main

CONFIG = "examples/mnist_dfc.yaml"
REPO = Path(__file__).resolve().parents[2]

ROWS = [  # (override, what the one line must say)
    ("--model.init_args.dynamics.dt=0.5", "dt=0.5 is larger than the somatic time constant tau_v=0.2"),
    ("--model.init_args.variant=dfc_nope", "unknown variant 'dfc_nope'; choose one of"),
    ("--model.init_args.loss=hinge", "unknown loss 'hinge'"),
    ("--model.init_args.dynamics.steps=1", "steps must be an integer >= 2"),
    ("--model.init_args.dynamics.sigma=-1", "sigma must be >= 0, got -1.0"),
    ("--model.init_args.target_stepsize=0", "target_stepsize (lambda) must be a finite positive number"),
    ("--model.init_args.network.init_args.output_activation=tanh", "the network's output layer must be linear"),
    ("--data.batch_size=0", "must be a positive integer, got 0"),
    ("--model.init_args.updates.max_skipped_fraction=2", "max_skipped_fraction must lie in (0, 1]"),
]


@pytest.mark.parametrize("override, said", ROWS, ids=[r[0].split("=")[0].rsplit(".", 1)[-1] for r in ROWS])
def test_a_bad_value_is_one_error_line(override, said, capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", CONFIG, override, "--data.data_dir=/nonexistent", "--trainer.logger=false"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("lightning-dfc: error: ") and said in lines[0], err
    assert len(lines) == 2 and TRACEBACK_ENV in lines[1], err  # no traceback, no Namespace dump
    assert "Traceback" not in err and "Namespace(" not in err


def test_the_traceback_on_request(monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="tau_v"):
        main(["fit", "--config", CONFIG, "--model.init_args.dynamics.dt=0.5", "--data.data_dir=/nonexistent",
              "--trainer.logger=false"])


def _no_network(self) -> None:
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error>")


@pytest.mark.parametrize("download", [True, False])
def test_the_main_job_offline_is_one_error_line(download, tmp_path, capsys, monkeypatch):
    """The README's main job on a machine without MNIST and without internet (issue 14): one line
    naming --data.data_dir and the download option, status 2, no traceback."""
    from lightning_dfc.shell.data import MNISTDataModule

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.setattr(MNISTDataModule.dataset_class, "download", _no_network)
    monkeypatch.chdir(tmp_path)  # the config's data_dir is the relative "data"
    args = ["fit", "--config", str(REPO / CONFIG), "--trainer.logger=false",
            f"--data.download={str(download).lower()}"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lightning-dfc: error: ")]
    assert len(lines) == 1, err
    assert str((tmp_path / "data" / "MNIST" / "raw").resolve()) in lines[0]
    assert "--data.data_dir" in lines[0]
    assert ("downloading it failed" in lines[0]) == download
    assert ("--data.download=true" in lines[0]) == (not download)
    assert "Traceback" not in err and "urlopen" not in err


def test_the_main_job_offline_traceback_on_request(tmp_path, monkeypatch):
    from lightning_dfc.shell.data import DataDownloadError, MNISTDataModule

    monkeypatch.setenv(TRACEBACK_ENV, "1")
    monkeypatch.setattr(MNISTDataModule.dataset_class, "download", _no_network)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataDownloadError, match="urlopen"):
        main(["fit", "--config", str(REPO / CONFIG), "--trainer.logger=false"])


# what the command was asked that cannot work, refused before anything is built (issue 24):
# (subcommand, arguments, what the one line must say); {tmp} is a folder of the test's own
RUN_ROWS = [
    ("fit", ["--ckpt_path={tmp}/cut.ckpt"], "--ckpt_path {tmp}/cut.ckpt: not a complete checkpoint"),
    ("test", ["--ckpt_path={tmp}/nothere.ckpt"], "--ckpt_path {tmp}/nothere.ckpt: there is no such file"),
    ("fit", ["--trainer.precision=16-mixed"], "--trainer.precision=16-mixed: precision='16-mixed' is not supported"),
    ("fit", ["--trainer.accelerator=gpu"], "--trainer.accelerator=gpu: torch finds no CUDA GPU on this machine"),
]
# jsonargparse's refusals of a value's type: the option as typed, the value and the expected type
TYPE_ROWS = [
    ("--model.init_args.feedback.pretrain_until=always",
     "--model.init_args.feedback.pretrain_until=always: expected float, 'auto' or None"),
    ("--model.init_args.dynamics.steps=abc", "--model.init_args.dynamics.steps=abc: expected int"),
    ("--model.init_args.dynamics.stepz=3", "--model.init_args.dynamics.stepz=3: option 'stepz' is not accepted"),
    ("--trainer.max_epochs=x", "--trainer.max_epochs=x: expected int or None"),
]


def one_error_line(args: list[str], capsys) -> str:
    """The command's one ``error:`` line (status 2, no traceback, at most a tip after it)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("💡")]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err and "NestedArg" not in err, err
    assert len(lines) <= 2, err
    return errors[0]


@pytest.mark.parametrize("subcommand, extra, said", RUN_ROWS, ids=["cut-checkpoint", "missing-checkpoint",
                                                                    "16-mixed", "no-gpu"])
def test_what_cannot_run_is_one_error_line(subcommand, extra, said, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 the first bytes of a zip archive, and then nothing")
    args = [subcommand, "--config", CONFIG, f"--data.data_dir={tmp_path / 'no_data'}", "--data.download=false",
            "--trainer.logger=false", *(a.format(tmp=tmp_path) for a in extra)]
    line = one_error_line(args, capsys)
    assert line.startswith("lightning-dfc: error: ") and said.format(tmp=tmp_path) in line, line


@pytest.mark.parametrize("override, said", TYPE_ROWS, ids=["union", "int", "unknown-key", "trainer"])
def test_a_wrong_type_is_one_error_line(override, said, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    line = one_error_line(["fit", "--config", CONFIG, override, f"--data.data_dir={tmp_path}", "--data.download=false"],
                          capsys)
    assert line.startswith("lightning-dfc fit: error: ") and line.endswith(said), line


def test_a_wrong_type_in_full_on_request(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, "--model.init_args.dynamics.steps=abc", f"--data.data_dir={tmp_path}"])
    assert "NestedArg(key='dynamics.steps', val='abc')" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["a-file", "test-files-only"])
def test_a_wrong_data_folder_is_named(case, tmp_path, capsys, monkeypatch):
    """``--data.data_dir`` that is a file (nothing is downloaded into it), or a folder that holds
    only the test files: the one line says which, and names the missing files."""
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    if case == "a-file":
        data_dir = tmp_path / "afile"
        data_dir.write_text("not a folder")
        said = f"--data.data_dir {data_dir.resolve()} is a file, not a folder"
    else:
        data_dir, raw = tmp_path / "data", tmp_path / "data" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (raw / name).write_bytes(b"")
        said = f"{raw.resolve()} lacks train-images-idx3-ubyte, train-labels-idx1-ubyte of MNIST"
    line = one_error_line(["fit", "--config", CONFIG, f"--data.data_dir={data_dir}", "--data.download=false",
                           "--trainer.logger=false"], capsys)
    assert said in line, line
