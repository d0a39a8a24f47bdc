"""The ``lightning-dfc`` command (LightningCLI): printing configs, entry points, the
fit -> validate/test/predict round trip through checkpoints, overrides and error messages.

Everything runs on tiny fake MNIST files with short simulations.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import write_fake_mnist

import lightning_dfc
from lightning_dfc import METHODS, MLP, DFCModule
from lightning_dfc.shell.cli import DFCLightningCLI, build_cli, main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "examples" / "mnist_dfc.yaml")

# a short, fast version of examples/mnist_dfc.yaml: one forward epoch = 1 sleep + 1 wake epoch
SHORT = [
    "--model.init_args.dynamics.steps=20",
    "--model.init_args.feedback.simulation.steps=10",
    "--model.init_args.feedback.pretrain_epochs=0",
    "--model.init_args.feedback.sleep_after=0",
    "--model.init_args.updates.exclude_non_converged=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def data_args(root: Path) -> list[str]:
    return [f"--data.data_dir={root}", "--data.download=false", "--data.val_size=16",
            "--data.batch_size=16"]


pytestmark = pytest.mark.usefixtures("one_thread", "cli_isolation")


# --------------------------------------------------------------------------------------------
# `python -m lightning_dfc --help` in a subprocess: started at the first test of this module and
# checked by the last one, so that the interpreter start-up overlaps with the in-process tests


@pytest.fixture(scope="module", autouse=True)
def module_help(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "lightning_dfc", "--help"],
                            cwd=tmp_path_factory.mktemp("entry"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


# --------------------------------------------------------------------------------------------
# configs


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", CONFIG, "--model.variant=dfc_ss", "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]
    assert model["class_path"] == "lightning_dfc.DFCModule"
    init = model["init_args"]
    assert init["variant"] == "dfc_ss"  # the short override form
    assert init["loss"] == "cross_entropy"
    assert init["target_stepsize"] == pytest.approx(0.07794471150634391, rel=1e-12)
    assert init["network"]["init_args"]["sizes"] == [784, 256, 256, 256, 10]
    # the dataclass groups are printed completely, defaults included
    assert init["dynamics"]["steps"] == 1000 and init["dynamics"]["tau_apical"] is None
    assert init["feedback"]["simulation"]["steps"] == 48
    assert init["updates"]["exclude_non_converged"] is True
    assert printed["trainer"]["precision"] == "64-true"
    assert printed["data"]["class_path"] == "lightning_dfc.shell.data.MNISTDataModule"


def test_variant_override() -> None:
    cli = build_cli(["--config", CONFIG, "--model.init_args.variant=dfc_ssa_fixed",
                     "--model.init_args.dynamics.steps=33", "--trainer.logger=false"], run=False)
    assert isinstance(cli, DFCLightningCLI)
    model = cli.model
    assert model.dfc_variant == "dfc_ssa_fixed"
    assert model.dfc_method == METHODS["dfc_ssa_fixed"]
    assert model.dfc_method.rule == "dfc_ssa" and not model.dfc_method.train_feedback
    assert model.dfc_dynamics.steps == 33 and model.dfc_dynamics.k_p == 2.0  # rest from the file
    assert model.dfc_schedule.cycle == 1  # fixed feedback: no sleep epochs
    assert model.hparams["variant"] == "dfc_ssa_fixed"


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of a rejected configuration (jsonargparse raises, or prints and exits)."""
    with pytest.raises((ValueError, SystemExit)) as info:
        build_cli(args)
    captured = capsys.readouterr()
    return f"{info.value}\n{captured.err}\n{captured.out}"


def test_bad_dt_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    message = cli_error(["fit", "--config", CONFIG, "--model.init_args.dynamics.dt=1.0"], capsys)
    assert "dt=1.0" in message and "tau_v=0.2" in message


def test_unknown_variant_lists_the_variants(capsys: pytest.CaptureFixture[str]) -> None:
    message = cli_error(["fit", "--config", CONFIG, "--model.init_args.variant=dfc_nope"], capsys)
    assert "dfc_nope" in message
    assert all(repr(name) in message for name in METHODS), message


def test_missing_data_lists_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full message (the command itself prints one line: tests/shell/test_cli_errors.py)."""
    monkeypatch.setenv("LIGHTNING_DFC_TRACEBACK", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        main(["fit", "--config", CONFIG, f"--data.data_dir={empty}", "--data.download=false",
              "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path / 'run'}"])
    message = str(info.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message
    assert str(empty / "MNIST" / "raw") in message


# --------------------------------------------------------------------------------------------
# fit, then validate / test / predict from the checkpoint


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fit")
    write_fake_mnist(root / "data", 64, 32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["lightning-dfc"])
        mp.chdir(root)
        cli = build_cli(["fit", "--config", CONFIG, *data_args(root / "data"), *SHORT,
                         "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={root / 'logs'}"])
    return {"cli": cli, "root": root, "data": root / "data"}


def test_fit_writes_checkpoints(fitted: dict[str, Any]) -> None:
    cli = fitted["cli"]
    trainer = cli.trainer
    assert trainer.state.finished
    assert trainer.current_epoch == 2  # 1 forward epoch = sleep + wake Lightning epochs
    assert trainer.global_step == 6  # 3 sleep + 3 wake optimizer steps (48 samples / 16)
    log_dir = Path(trainer.log_dir)
    assert log_dir.is_relative_to(fitted["root"] / "logs" / "mnist_dfc")
    assert (log_dir / "config.yaml").is_file() and (log_dir / "metrics.csv").is_file()
    callback = trainer.checkpoint_callback
    assert callback.monitor == "val_acc"
    assert Path(callback.best_model_path).is_file() and Path(callback.last_model_path).is_file()
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))


def test_a_resume_from_the_command_line_keeps_its_changed_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str], caplog) -> None:
    """LightningCLI builds a resumed model from the checkpoint's hyperparameters, which would drop
    a changed setting without a word: the command line's are kept, so a change is named and
    refused (one line per setting, status 2), or, with resume_with_changes, named and used, and
    the new run's config.yaml says what it ran with."""
    import logging

    write_fake_mnist(tmp_path / "data", 64, 32)
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTNING_DFC_TRACEBACK", raising=False)
    fit = ["fit", "--config", CONFIG, *data_args(tmp_path / "data"), *SHORT,
           f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"]
    first = build_cli([*fit, "--trainer.max_epochs=1"])
    last = first.trainer.checkpoint_callback.last_model_path
    changed = [*fit, "--trainer.max_epochs=2", f"--ckpt_path={last}", "--model.init_args.dynamics.dt=0.01"]
    with pytest.raises(SystemExit) as info:
        main(changed)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "lightning-dfc: error: cannot resume training from this checkpoint" in err
    assert "\n  dynamics.dt: 0.02 -> 0.01\n" in err and "--model.init_args.resume_with_changes=true" in err
    assert "Traceback" not in err
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        resumed = build_cli([*changed, "--model.init_args.resume_with_changes=true"])
    assert resumed.model.dfc_dynamics.dt == 0.01 and resumed.trainer.current_epoch == 4
    assert "lightning-dfc: resuming with a changed setting: dynamics.dt: 0.02 -> 0.01" in [
        r.getMessage() for r in caplog.records]
    saved = yaml.safe_load((Path(resumed.trainer.log_dir) / "config.yaml").read_text())
    assert saved["model"]["init_args"]["dynamics"]["dt"] == 0.01
    assert saved["model"]["init_args"]["resume_with_changes"] is True


def test_ckpt_path_last_resumes_the_newest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``fit --ckpt_path last`` continues from the newest run's last.ckpt under the logger's
    save_dir/name (Lightning alone looks in the new run's folder, finds none and starts over);
    the continuation logs into a new version and ends equal to the uninterrupted run. With no run
    there it is one error line."""
    write_fake_mnist(tmp_path / "data", 64, 32)
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)
    logs = f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"
    fit = ["fit", "--config", CONFIG, *data_args(tmp_path / "data"), *SHORT, logs]
    with pytest.raises(SystemExit) as info:
        build_cli([*fit, "--trainer.max_epochs=1", "--ckpt_path=last"])
    assert info.value.code == 2
    assert "no run under" in capsys.readouterr().err
    first = build_cli([*fit, "--trainer.max_epochs=1"])
    last = Path(first.trainer.checkpoint_callback.last_model_path)
    assert last.parent.parent.name == "version_0"
    resumed = build_cli([*fit, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert resumed.trainer.ckpt_path == str(last)
    assert f"resuming from {last}" in capsys.readouterr().err
    assert Path(resumed.trainer.log_dir).name == "version_1"
    assert resumed.trainer.current_epoch == 4 and resumed.trainer.global_step == 12  # 2 forward epochs in all
    # and it ends where the uninterrupted run ends (every epoch is seeded from the run's seed and its index)
    whole = build_cli([*fit[:-1], f"--trainer.logger.init_args.save_dir={tmp_path / 'whole'}", "--trainer.max_epochs=2"])
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def run_from_checkpoint(subcommand: str, fitted: dict[str, Any]) -> DFCLightningCLI:
    ckpt = fitted["cli"].trainer.checkpoint_callback.last_model_path
    return build_cli([subcommand, "--config", CONFIG, *data_args(fitted["data"]), *SHORT,
                      "--trainer.logger=false", f"--ckpt_path={ckpt}"])


def test_validate_from_checkpoint(fitted: dict[str, Any]) -> None:
    cli = run_from_checkpoint("validate", fitted)
    assert cli.trainer.state.fn == "validate"
    # last.ckpt holds the final weights, which the last validation of fit also saw
    expected = fitted["cli"].trainer.callback_metrics
    for key in ("val_loss", "val_acc"):
        assert float(cli.trainer.callback_metrics[key]) == pytest.approx(float(expected[key]), rel=1e-12)


def test_test_from_checkpoint(fitted: dict[str, Any]) -> None:
    """``test --ckpt_path``: the accuracy and cross-entropy of the checkpoint's weights on the test
    set, recomputed here from the network's outputs (last.ckpt holds the fit's final weights)."""
    cli = run_from_checkpoint("test", fitted)
    metrics = cli.trainer.callback_metrics
    batches = list(cli.datamodule.test_dataloader())
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert len(y) == 32
    outputs = trained_outputs(fitted, x)
    expected_acc = float((outputs.argmax(1) == y).double().mean())
    expected_loss = float(torch.nn.functional.cross_entropy(outputs, y))
    assert float(metrics["test_acc"]) == pytest.approx(expected_acc, abs=1e-7)
    assert float(metrics["test_loss"]) == pytest.approx(expected_loss, rel=1e-6)


def trained_outputs(fitted: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    model = fitted["cli"].model
    with torch.no_grad():
        return model(x.to(torch.float64))


def test_predict_from_checkpoint(fitted: dict[str, Any]) -> None:
    cli = run_from_checkpoint("predict", fitted)
    predictions = cli.trainer.predict_loop.predictions
    assert len(predictions) == 2  # 32 test images in batches of 16
    predicted = torch.cat(predictions)
    x = torch.cat([batch[0] for batch in cli.datamodule.predict_dataloader()])
    assert predicted.shape == (32, 10) and predicted.dtype == torch.float64
    assert torch.equal(predicted, trained_outputs(fitted, x))


def load_float64(ckpt: str, **kwargs: Any) -> DFCModule:
    """``load_from_checkpoint`` building the float64 network the weights came from (the
    checkpoint of a ``precision: 64-true`` run holds float64 weights)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return DFCModule.load_from_checkpoint(ckpt, **kwargs)
    finally:
        torch.set_default_dtype(previous)


def assert_same_model(loaded: DFCModule, fitted: dict[str, Any]) -> None:
    trained = fitted["cli"].model
    x = torch.cat([batch[0] for batch in fitted["cli"].datamodule.val_dataloader()])
    assert loaded.dfc_variant == "dfc" and loaded.dfc_loss == "cross_entropy"
    assert loaded.dfc_net.sizes == [784, 256, 256, 256, 10]
    assert loaded.dfc_dynamics.steps == 20 and loaded.dfc_feedback_config.pretrain_epochs == 0
    with torch.no_grad():
        assert torch.equal(loaded(x.to(torch.float64)), trained_outputs(fitted, x))
    for q_loaded, q_trained in zip(loaded.dfc_net.feedback, trained.dfc_net.feedback):
        assert torch.equal(q_loaded, q_trained)


def test_load_from_checkpoint_without_arguments(fitted: dict[str, Any]) -> None:
    """Under the CLI the hyperparameters are the parsed config, network included."""
    ckpt = fitted["cli"].trainer.checkpoint_callback.last_model_path
    assert_same_model(load_float64(ckpt), fitted)
    # a plain load (float32 default dtype) agrees up to float32 rounding
    plain = DFCModule.load_from_checkpoint(ckpt)
    x = torch.cat([batch[0] for batch in fitted["cli"].datamodule.val_dataloader()])
    with torch.no_grad():
        output = plain(x.to(next(plain.parameters()).dtype)).double()
    assert torch.allclose(output, trained_outputs(fitted, x), rtol=1e-4, atol=1e-5)


def test_load_from_checkpoint_with_network(fitted: dict[str, Any]) -> None:
    ckpt = fitted["cli"].trainer.checkpoint_callback.last_model_path
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        network = MLP([784, 256, 256, 256, 10])
    finally:
        torch.set_default_dtype(previous)
    assert_same_model(load_float64(ckpt, network=network), fitted)


# --------------------------------------------------------------------------------------------
# entry points (last: the --help subprocess ran in the background meanwhile)


def test_console_script_entry_point() -> None:
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("lightning-dfc") == "lightning_dfc.shell.cli:main"


def print_version(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(["--version"])  # sys.argv[0] is "lightning-dfc", as for the console script
    assert info.value.code in (0, None)
    return capsys.readouterr().out.strip()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    out = print_version(capsys)
    assert out.endswith(f"lightning-dfc {lightning_dfc.__version__}")


def test_version_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_version(capsys) == f"lightning-dfc {lightning_dfc.__version__}"


def test_module_help(module_help: subprocess.Popen) -> None:
    out, err = module_help.communicate(timeout=240)
    assert module_help.returncode == 0, err
    assert "usage:" in out
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in out
