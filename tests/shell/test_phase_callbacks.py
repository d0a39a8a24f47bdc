"""Lightning's EarlyStopping and ModelCheckpoint across the DFC schedule: they see wake epochs only
(issue 14), through a whole schedule of pre-training, sleep and wake epochs."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig

SLEEP = SimulationConfig(dt=0.005, steps=10, k_p=0.1, alpha=0.5, tau_v=0.01, tau_apical=0.1,
                         proactive=False, sigma=0.02, early_stop=False)


def _model(pretrain=3):
    torch.manual_seed(0)
    return DFCModule(MLP([8, 10, 3]), target_stepsize=0.1, dynamics=SimulationConfig(steps=20),
                     feedback=FeedbackConfig(pretrain_epochs=pretrain, sleep_before=1, sleep_after=2,
                                             simulation=SLEEP))


def _loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    return DataLoader(TensorDataset(x, x[:, :3].argmax(1)), batch_size=16)


def _trainer(tmp_path, epochs, callbacks):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", precision="64-true", logger=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                      default_root_dir=tmp_path, num_sanity_val_steps=0)


def test_early_stopping_counts_wake_epochs_only(tmp_path):
    model = _model(pretrain=3)
    stop = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)  # no wake epoch ever improves enough
    trainer = _trainer(tmp_path, 5, [stop])
    trainer.fit(model, _loader(), _loader(1))
    phases = [model.dfc_schedule(e).phase.value for e in range(trainer.current_epoch)]
    # pre-training (3) and sleep epochs do not count: the first wake epoch sets the best score,
    # the second one exhausts the patience of 1, and the run stops right after it
    assert phases.count("wake") == 2, phases
    assert model.dfc_schedule(stop.stopped_epoch).phase.value == "wake"
    assert stop.wait_count == 1


def test_model_checkpoint_on_a_train_metric_without_validation(tmp_path):
    model = _model(pretrain=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_loss", save_last=True)
    trainer = _trainer(tmp_path, 2, [ckpt])
    trainer.fit(model, _loader())  # before: crashed after the first pre-training epoch (no train_loss)
    epoch = torch.load(ckpt.best_model_path, weights_only=False)["epoch"]
    assert model.dfc_schedule(epoch).phase.value == "wake"
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert state["epoch"] == trainer.current_epoch - 1  # refreshed after the last (sleep) epoch too


def test_model_checkpoint_on_val_keeps_the_best_wake_epoch(tmp_path):
    model = _model(pretrain=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max", save_top_k=-1)
    _trainer(tmp_path, 2, [ckpt]).fit(model, _loader(), _loader(1))
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    epochs = [torch.load(tmp_path / "ckpt" / name, weights_only=False)["epoch"] for name in saved]
    assert [model.dfc_schedule(e).phase.value for e in epochs] == ["wake", "wake"], saved


def test_last_checkpoint_follows_every_epoch_when_the_monitor_does_not_improve(tmp_path):
    """``save_last``: ``last.ckpt`` holds the epoch just ended after every epoch, also after wake
    epochs that did not improve the monitored value (Lightning alone writes it only with a new
    best checkpoint: a resume from it would repeat the epochs since)."""
    torch.manual_seed(0)
    model = DFCModule(MLP([8, 10, 3]), target_stepsize=0.1, dynamics=SimulationConfig(steps=20),
                      feedback=FeedbackConfig(pretrain_epochs=1, sleep_before=1, sleep_after=0, simulation=SLEEP))
    last = tmp_path / "ckpt" / "last.ckpt"
    seen = []

    class LastAtEpochStart(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch > 0:
                seen.append((trainer.current_epoch - 1, torch.load(last, weights_only=False)["epoch"]))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="epoch", mode="min", save_last=True)  # 1st wake epoch best
    trainer = _trainer(tmp_path, 3, [LastAtEpochStart(), ckpt])
    trainer.fit(model, _loader(), _loader(1))
    phases = [model.dfc_schedule(e).phase.value for e in range(trainer.current_epoch)]
    assert phases == ["pretrain", "sleep", "wake", "sleep", "wake", "sleep", "wake"], phases
    assert seen == [(e, e) for e in range(trainer.current_epoch - 1)]
    assert torch.load(last, weights_only=False)["epoch"] == trainer.current_epoch - 1  # after the last wake epoch
    assert model.dfc_schedule(torch.load(ckpt.best_model_path, weights_only=False)["epoch"]).phase.value == "wake"
