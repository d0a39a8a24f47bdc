"""The phases in words on the progress bar (issue 14)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc import MLP, DFCModule, FeedbackConfig, PhaseSchedule, SimulationConfig


def test_the_schedule_in_words():
    s = PhaseSchedule(pretrain_epochs=2, sleep_before=1, sleep_after=2)
    words = [s.describe(e, 2) for e in range(s.total_epochs(2))]
    assert words == [
        "pre-training 1/2", "pre-training 2/2",
        "sleep (before wake 1/2)", "wake 1/2", "sleep (after wake 1/2, 1/2)", "sleep (after wake 1/2, 2/2)",
        "sleep (before wake 2/2)", "wake 2/2", "sleep (after wake 2/2, 1/2)", "sleep (after wake 2/2, 2/2)",
    ]
    fixed = PhaseSchedule(pretrain_epochs=5, train_feedback=False)
    assert [fixed.describe(e, 3) for e in range(3)] == ["wake 1/3", "wake 2/3", "wake 3/3"]
    assert PhaseSchedule(pretrain_epochs=0, sleep_after=1).describe(2) == "sleep (after wake 1)"
    # pre-training that may end early (feedback.pretrain_until); the other phases read the same
    assert [s.describe(e, 2, pretrain_open=True) for e in range(4)] == [
        "pre-training 1/≤2", "pre-training 2/≤2", "sleep (before wake 1/2)", "wake 1/2"]


def test_the_progress_bar_says_the_phase(tmp_path):
    torch.manual_seed(0)
    sleep = SimulationConfig(dt=0.005, steps=10, k_p=0.1, alpha=0.5, tau_v=0.01, tau_apical=0.1,
                             proactive=False, sigma=0.02, early_stop=False)
    model = DFCModule(MLP([8, 10, 3]), target_stepsize=0.1, dynamics=SimulationConfig(steps=20),
                      feedback=FeedbackConfig(pretrain_epochs=1, pretrain_until=None, sleep_before=1, sleep_after=1,
                                              simulation=sleep))
    x = torch.randn(16, 8)
    seen = []

    class Spy(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.progress_bar_callback.train_progress_bar.desc.strip(": "))

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", precision="64-true", logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[Spy()],
                         default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(TensorDataset(x, x[:, :3].argmax(1)), batch_size=8))
    assert seen == ["pre-training 1/1", "sleep (before wake 1/1)", "wake 1/1", "sleep (after wake 1/1)"]
    assert "phase" not in trainer.progress_bar_metrics
