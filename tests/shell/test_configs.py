"""The example configs: each one trains through the CLI, and has the expected trainer and data.

* ``test_example_trains``: every ``examples/*.yaml`` runs one ``fast_dev_run`` step of ``fit``
  through :func:`lightning_dfc.shell.cli.build_cli` on tiny data (fake MNIST IDX files or a small
  teacher) with a short simulation, and must change the weights it trains, its output layer's
  step descending the loss on the batch it was computed on.
* ``test_example_trainer_section``, ``test_example_data``: logging, checkpointing and the data
  modules.

That the hyperparameters are the published ones is checked in ``test_published_configs.py``,
against what the authors' own parsers make of their configs and commands.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers import write_fake_mnist

from lightning_dfc import DFCModule
from lightning_dfc.shell.cli import build_cli
from lightning_dfc.core.losses import loss_value
from lightning_dfc.shell.data import FashionMNISTDataModule, MNISTDataModule, StudentTeacherDataModule

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EXAMPLE_IDS = [p.stem for p in EXAMPLES]

TRAINED = ("dfc", "dfc_ss", "dfc_ssa")
PREFIXES = ("mnist_autoencoder_", "mnist_train_", "fmnist_", "mnist_", "toy_")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def task_and_variant(stem: str) -> tuple[str, str]:
    """``mnist_autoencoder_dfc_fixed`` -> (``mnist_autoencoder``, ``dfc_fixed``);
    ``mnist_dfc_noise`` and ``mnist_dfc_noisy_dynamics`` -> (``mnist``, ``dfc``)."""
    for prefix in PREFIXES:
        if stem.startswith(prefix):
            return prefix[:-1], stem[len(prefix):].removesuffix("_noise").removesuffix("_noisy_dynamics")
    raise AssertionError(f"unexpected example name {stem!r}")


# --------------------------------------------------------------------------------------------
# every example trains


pytestmark = pytest.mark.usefixtures("one_thread", "cli_isolation")


def fast_args(config: Path, tmp_path: Path) -> list[str]:
    """CLI arguments for one quick step of ``config`` on tiny data."""
    raw = load(config)
    init = raw["model"]["init_args"]
    args = [
        "--config", str(config),
        "--trainer.fast_dev_run=1",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    if "dynamics" in init and not init.get("variant", "").endswith("_fixed"):
        # (fixed random feedback keeps the published simulation: it settles slowly, and after 20
        # steps its output step points anywhere)
        args.append("--model.init_args.dynamics.steps=20")
    if "feedback" in init:
        args.append("--model.init_args.feedback.simulation.steps=10")
    if init.get("updates", {}).get("exclude_non_converged"):
        # With 20 steps no sample converges, so every sample would be excluded and the update
        # would be zero (checked separately in test_excluded_samples_give_no_update).
        args.append("--model.init_args.updates.exclude_non_converged=false")
    data_class = raw["data"]["class_path"]
    if data_class.endswith("StudentTeacherDataModule"):
        args += ["--data.num_train=64", "--data.num_val=16", "--data.num_test=16",
                 "--data.teacher_hidden=[32]"]
    else:
        folder = "FashionMNIST" if data_class.endswith("FashionMNISTDataModule") else "MNIST"
        write_fake_mnist(tmp_path / "data", 64, 32, folder=folder)
        args += [f"--data.data_dir={tmp_path / 'data'}", "--data.val_size=16",
                 "--data.batch_size=8", "--data.download=false"]
    return args


def snapshot(model: DFCModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.startswith(("network.", "dfc_feedback_weights."))}


class _FirstBatch(pl.Callback):
    """The first training batch as the module reads it (inputs prepared, float64)."""

    batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batch is None:
            x, y = pl_module.dfc_unpack_batch(batch)
            self.batch = (pl_module.dfc_net.prepare_input(x), y)


@pytest.mark.parametrize("config", EXAMPLES, ids=EXAMPLE_IDS)
def test_example_trains(config: Path, tmp_path: Path) -> None:
    task, variant = task_and_variant(config.stem)
    cli = build_cli(fast_args(config, tmp_path), run=False)
    model = cli.model
    assert isinstance(model, DFCModule)
    assert model.dfc_variant == variant
    assert model.dfc_loss == ("mse" if task in ("mnist_autoencoder", "toy") else "cross_entropy")
    sizes = {"mnist_autoencoder": [784, 256, 32, 256, 784], "toy": [15, 10, 10, 5]}
    assert model.dfc_net.sizes == sizes.get(task, [784, 256, 256, 256, 10])
    data_class = {"fmnist": FashionMNISTDataModule, "toy": StudentTeacherDataModule}
    assert type(cli.datamodule) is data_class.get(task, MNISTDataModule)
    if task == "mnist_autoencoder":
        assert cli.datamodule.autoencoder

    before = snapshot(model)
    batches = _FirstBatch()
    cli.trainer.callbacks.append(batches)
    cli.trainer.fit(model, datamodule=cli.datamodule)  # what the `fit` subcommand runs
    after = snapshot(model)

    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step >= 1
    assert all(p.dtype == torch.float64 for p in model.parameters())  # precision: 64-true
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    assert math.isfinite(float(trainer.callback_metrics["train_loss_epoch"]))
    # every forward weight and bias moved (one optimizer step)
    for key in before:
        if key.startswith("network."):
            assert not torch.equal(before[key], after[key]), f"{key} did not change"
    # the direction: the output layer's step descends the loss on the batch it was computed on
    # (the output layer's local update is the loss gradient's direction in every method, so a
    # flipped or misrouted update fails here; tests/core/test_directions.py checks every layer)
    x, y = batches.batch
    dtype = before[next(iter(before))].dtype
    x, y = x.to(dtype), (y.to(dtype) if y.is_floating_point() else y)
    last = [k for k in before if k.startswith("network.") and k.endswith("weight")][-1]
    params = {k.removeprefix("network."): v.clone().requires_grad_(k == last)
              for k, v in before.items() if k.startswith("network.")}
    output = torch.func.functional_call(model.network, params, (x,))
    loss_value(output, y, model.dfc_loss).backward()
    step = after[last] - before[last]
    slope = float((params[last.removeprefix("network.")].grad * step).sum())
    assert slope < 0, f"{last}: the step ascends the training loss (directional derivative {slope:.3g})"
    # feedback weights: trained in the sleep step (except a frozen Q_L), else untouched
    qs = sorted(k for k in before if k.startswith("dfc_feedback_weights."))
    frozen_output = load(config)["model"]["init_args"].get("feedback", {}).get("freeze_output", False)
    for i, key in enumerate(qs):
        should_train = (variant in TRAINED or variant.startswith("strong")) and not (frozen_output and i == len(qs) - 1)
        assert torch.equal(before[key], after[key]) != should_train, key


def test_excluded_samples_give_no_update(tmp_path: Path) -> None:
    """As published (non-converged samples excluded), 20 steps converge nothing: W stays."""
    config = REPO / "examples" / "mnist_dfc_fixed.yaml"
    args = [a for a in fast_args(config, tmp_path) if "exclude_non_converged" not in a]
    args.append("--model.init_args.dynamics.steps=20")
    cli = build_cli(args, run=False)
    before = snapshot(cli.model)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.logged_metrics
    assert float(metrics["dfc/excluded_epoch"]) == float(metrics["dfc/non_converged_epoch"]) == 8.0
    after = snapshot(cli.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------------------------
# the trainer section (the hyperparameters are checked against the authors' parsers in
# test_published_configs.py)

MONITOR = {"mnist_autoencoder": ("val_loss", "min"), "toy": ("val_loss", "min"),
           "mnist_train": ("train_loss_epoch", "min")}


def close(actual: Any, expected: float) -> bool:
    """Equal up to float rounding, and a float (``1e-3`` would be a string in YAML 1.1)."""
    return isinstance(actual, float) and math.isclose(actual, expected, rel_tol=1e-9)


@pytest.mark.parametrize("config", EXAMPLES, ids=EXAMPLE_IDS)
def test_example_trainer_section(config: Path) -> None:
    task, _ = task_and_variant(config.stem)
    raw = load(config)
    assert raw["seed_everything"] == 42
    trainer = raw["trainer"]
    assert trainer["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert trainer["logger"]["init_args"]["name"] == config.stem
    (checkpoint,) = [c for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    others = [c["class_path"] for c in trainer["callbacks"] if c is not checkpoint]
    assert others == (["lightning_dfc.shell.callbacks.ReconstructionGrid"] if task == "mnist_autoencoder" else [])
    assert checkpoint["class_path"] == "lightning.pytorch.callbacks.ModelCheckpoint"
    monitor = MONITOR.get(task, ("val_acc", "max"))
    assert (checkpoint["init_args"]["monitor"], checkpoint["init_args"]["mode"]) == monitor
    assert raw["model"]["class_path"] == "lightning_dfc.DFCModule"
    assert raw["model"]["init_args"]["network"]["class_path"] == "lightning_dfc.MLP"


@pytest.mark.parametrize("config", EXAMPLES, ids=EXAMPLE_IDS)
def test_example_data(config: Path) -> None:
    task, _ = task_and_variant(config.stem)
    data = load(config)["data"]
    args = data["init_args"]
    if task == "toy":
        assert data["class_path"] == "lightning_dfc.shell.data.StudentTeacherDataModule"
        assert args["teacher_hidden"] == [1000] * 4 and args["teacher_activation"] == "relu"
        assert (args["num_train"], args["num_val"], args["num_test"]) == (5000, 1000, 1000)
        assert close(args["teacher_init_gain"], 3.0) and args["batch_size"] == 128
        return
    expected = "FashionMNISTDataModule" if task == "fmnist" else "MNISTDataModule"
    assert data["class_path"] == f"lightning_dfc.shell.data.{expected}"
    # the batch size is the published run's (test_published_configs checks it); all but one use 128
    assert args["batch_size"] == (32 if config.stem == "mnist_dfc_noisy_dynamics" else 128)
    assert args["val_size"] == 5000
    assert args.get("autoencoder", False) is (task == "mnist_autoencoder")
