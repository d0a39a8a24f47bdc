"""The private pieces of Lightning the package relies on (``shell/lightning_internals.py``), each
checked against the installed Lightning on a plain LightningModule: a Lightning release that moves
one fails here, by name."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc.shell.lightning_internals import (attached_trainer, epochs_processed, save_last_checkpoint,
                                                     set_max_steps, train_progress_bar)


class Plain(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(16, 4, generator=generator), torch.randn(16, 1, generator=generator)),
                      batch_size=8)


def _trainer(tmp_path, callbacks, epochs: int = 2, **kwargs) -> pl.Trainer:
    options = dict(max_epochs=epochs, logger=False, enable_model_summary=False, num_sanity_val_steps=0,
                   default_root_dir=tmp_path, callbacks=callbacks, enable_progress_bar=False)
    return pl.Trainer(**{**options, **kwargs})


class Seen(Callback):
    def __init__(self, read) -> None:
        self.read, self.values = read, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.values.append(self.read(trainer, pl_module))


def test_attached_trainer(tmp_path):
    module = Plain()
    assert attached_trainer(module) is None
    seen = Seen(lambda trainer, module: attached_trainer(module) is trainer)
    _trainer(tmp_path, [seen]).fit(module, _loader())
    assert seen.values == [True, True]


def test_train_progress_bar(tmp_path):
    seen = Seen(lambda trainer, module: train_progress_bar(trainer))
    _trainer(tmp_path, [seen, TQDMProgressBar()], enable_progress_bar=True).fit(Plain(), _loader())
    assert all(callable(getattr(bar, "set_description", None)) for bar in seen.values) and seen.values
    without = Seen(lambda trainer, module: train_progress_bar(trainer))
    _trainer(tmp_path, [without]).fit(Plain(), _loader())
    assert without.values == [None, None]


def test_epochs_processed(tmp_path):
    trainer = _trainer(tmp_path, [], epochs=3)
    trainer.fit(Plain(), _loader())
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    assert epochs_processed(torch.load(tmp_path / "after.ckpt", weights_only=False)) == 3
    ckpt = ModelCheckpoint(dirpath=tmp_path / "every", save_top_k=-1)
    _trainer(tmp_path, [ckpt], epochs=2).fit(Plain(), _loader())
    first = next((tmp_path / "every").glob("epoch=0-*.ckpt"))
    assert epochs_processed(torch.load(first, weights_only=False)) == 1  # saved at epoch 0's end: its batches ran
    assert epochs_processed({"state_dict": {}}) is None


def test_save_last_checkpoint(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)
    last = tmp_path / "ckpt" / "last.ckpt"

    class SaveFirst(Callback):  # runs before the ModelCheckpoint (Lightning puts those last)
        def __init__(self) -> None:
            self.after_validation = []

        def on_validation_end(self, trainer, pl_module) -> None:
            # validation once per epoch: the callback saves at the train epoch's end, not here
            save_last_checkpoint(ckpt, trainer, "on_validation_end")
            self.after_validation.append(last.is_file())

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            assert not last.is_file()
            save_last_checkpoint(ckpt, trainer, "on_train_epoch_end")
            assert torch.load(last, weights_only=False)["epoch"] == 0

    first = SaveFirst()
    _trainer(tmp_path, [first, ckpt], epochs=1).fit(Plain(), _loader(), _loader())
    assert first.after_validation == [False] and last.is_file()


class StepLimit(Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_fit_start(self, trainer, pl_module) -> None:
        set_max_steps(trainer, self.steps)


def test_set_max_steps(tmp_path):
    """fast_dev_run=2 runs two steps, unless the limit is raised in on_fit_start (our batches
    take two steps each there); the trainer then reports the new limit."""
    trainer = _trainer(tmp_path, [StepLimit(3)], epochs=5, fast_dev_run=2)
    trainer.fit(Plain(), DataLoader(_loader().dataset, batch_size=2))
    assert trainer.global_step == 2  # fast_dev_run also limits the batches to 2: the epoch ends
    trainer = _trainer(tmp_path, [StepLimit(3)], epochs=5, max_steps=1)
    trainer.fit(Plain(), DataLoader(_loader().dataset, batch_size=2))
    assert trainer.global_step == 3 and trainer.max_steps == 3
