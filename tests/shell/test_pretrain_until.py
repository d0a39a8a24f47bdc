"""Feedback pre-training until the feedback weights are aligned (``feedback.pretrain_until``, issue 14):
Condition 2 is measured and logged after every pre-training epoch; the pre-training ends at the first
epoch that reaches the threshold, or at ``pretrain_epochs``, with a console line either way; the
run's epoch limit, the phase words, the summary and resuming follow."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import tiny_loader, tiny_sleep
from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig
from lightning_dfc.core.diagnostics import condition_2, jacobian_at

SLEEP = tiny_sleep()
_data = tiny_loader


def _model(**feedback):
    torch.manual_seed(0)
    feedback = {"pretrain_epochs": 4, "pretrain_until": None, "sleep_before": 1, "sleep_after": 1, "simulation": SLEEP,
                **feedback}
    return DFCModule(MLP([8, 10, 3]), target_stepsize=0.1, dynamics=SimulationConfig(steps=20),
                     feedback=FeedbackConfig(**feedback))


class Phases(pl.Callback):
    """The phase and its words at every epoch; Condition 2 measured independently after each
    pre-training epoch on that epoch's first batch."""

    def __init__(self):
        self.phases, self.words, self.condition_2 = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.phases.append(pl_module.dfc_phase.phase.value)
        self.words.append(pl_module.dfc_phase_description)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.first = batch[0]

    def on_train_epoch_end(self, trainer, pl_module):  # runs before the module's own hook
        if pl_module.dfc_phase.phase.value == "pretrain":
            params = pl_module.dfc_net.params()
            x = self.first.to(params.weights[0].dtype)
            self.condition_2.append(float(condition_2(jacobian_at(params, x), torch.cat(list(params.feedback))).mean()))


def _fit(model, tmp_path, epochs=2, **kw):
    spy = Phases()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", precision="64-true", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[spy, *kw.pop("callbacks", [])], **kw)
    trainer.fit(model, _data())
    return trainer, spy


def test_the_pretraining_ends_when_aligned(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer, spy = _fit(_model(pretrain_until=1e-3), tmp_path)
    assert spy.phases == ["pretrain", "sleep", "wake", "sleep", "sleep", "wake", "sleep"]
    assert spy.words[0] == "pre-training 1/≤4" and spy.words[1] == "sleep (before wake 1/2)"
    assert trainer.current_epoch == 7  # 1 + 2 x 3 Lightning epochs ran, not 4 + 2 x 3
    said = [r.getMessage() for r in caplog.records]
    assert any("feedback pre-training reached Condition 2 = " in m and ">= 0.001 after 1 of at most 4 epochs" in m
               for m in said), said
    assert trainer.lightning_module._dfc_pretrain_condition_2 == pytest.approx(spy.condition_2[0], rel=1e-12)
    summary = "\n".join(said[said.index("lightning-dfc: fit finished."):])
    assert "feedback pre-training: 1 epoch, Condition 2 = " in summary
    assert "(pretrain_until 0.001 reached, at most 4 epochs)" in summary


def test_the_pretraining_stops_at_its_limit_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer, spy = _fit(_model(pretrain_epochs=2, pretrain_until=1.0, pretrain_min_gain=0.0), tmp_path, epochs=1)
    assert spy.phases == ["pretrain", "pretrain", "sleep", "wake", "sleep"]
    assert spy.words[:2] == ["pre-training 1/≤2", "pre-training 2/≤2"]
    assert len(spy.condition_2) == 2 and all(0 < c < 1 for c in spy.condition_2)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("used all 2 epochs and reached Condition 2 = " in m and "< 1 (feedback.pretrain_until)" in m
               and "Raise feedback.pretrain_epochs" in m for m in warned), warned


def test_a_one_epoch_limit_is_said_in_the_singular(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        _fit(_model(pretrain_epochs=1, pretrain_until=1.0, pretrain_min_gain=0.0), tmp_path, epochs=1)
    said = [r.getMessage() for r in caplog.records]
    assert any("feedback pre-training used its 1 epoch and reached Condition 2 = " in m for m in said), said
    assert not [m for m in said if re.search(r"\b1 epochs\b", m)]


def test_the_pretraining_ends_when_condition_2_levels_off(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer, spy = _fit(_model(pretrain_until=1.0, pretrain_min_gain=1.0), tmp_path, epochs=1)
    assert spy.phases == ["pretrain", "pretrain", "sleep", "wake", "sleep"]  # the first epoch has no gain to judge
    gain = spy.condition_2[1] - spy.condition_2[0]
    said = [r.getMessage() for r in caplog.records]
    assert any(f"levelled off at Condition 2 = {spy.condition_2[1]:.3f} ({gain:+.4f} in the last epoch, below "
               "pretrain_min_gain 1) after 2 of at most 4 epochs" in m for m in said), said
    assert "(pretrain_until 1 not reached, at most 4 epochs)" in "\n".join(said)


def test_no_pretraining_with_a_threshold(tmp_path):
    trainer, spy = _fit(_model(pretrain_epochs=0, pretrain_until=0.9), tmp_path, epochs=1)
    assert spy.phases == ["sleep", "wake", "sleep"]


def test_without_a_threshold_the_count_is_fixed_and_condition_2_is_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer, spy = _fit(_model(pretrain_epochs=2), tmp_path, epochs=1)
    assert spy.phases == ["pretrain", "pretrain", "sleep", "wake", "sleep"]
    assert spy.words[:2] == ["pre-training 1/2", "pre-training 2/2"]
    assert float(trainer.callback_metrics["pretrain/condition_2"]) == pytest.approx(spy.condition_2[-1], rel=1e-6)  # logged as float32
    said = [r.getMessage() for r in caplog.records]
    assert any("feedback pre-training: 2 epochs, Condition 2 = " in m and "see feedback.pretrain_until" in m
               for m in said), said  # a tiny random network stays far from aligned


def test_a_resumed_run_keeps_the_early_end(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    whole = _model(pretrain_until=1e-3)
    _fit(whole, tmp_path / "a", callbacks=[ckpt])
    resumed = _model(pretrain_until=1e-3)
    spy = Phases()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", precision="64-true", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path / "b",
                         callbacks=[spy])
    trainer.fit(resumed, _data(), ckpt_path=next((tmp_path / "ckpt").glob("epoch=2-*.ckpt")))  # after wake 1
    assert spy.phases == ["sleep", "sleep", "wake", "sleep"]
    assert trainer.current_epoch == 7
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_changing_the_threshold_is_a_new_schedule(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _fit(_model(), tmp_path / "a", epochs=1, callbacks=[ckpt])
    with pytest.raises(ValueError, match=r"schedule pretrain_until=None \(now 0.5\)"):
        pl.Trainer(max_epochs=1, accelerator="cpu", precision="64-true", logger=False, enable_progress_bar=False,
                   default_root_dir=tmp_path / "b").fit(_model(pretrain_until=0.5), _data(),
                                                        ckpt_path=next((tmp_path / "ckpt").glob("epoch=0-*.ckpt")))


@pytest.mark.parametrize("kwargs, said", [
    (dict(pretrain_until=0.0), "pretrain_until (a Condition 2 threshold) must lie in (0, 1], or be 'auto' or None"),
    (dict(pretrain_until="always"), "must lie in (0, 1]"),
    (dict(pretrain_until=1.5), "must lie in (0, 1]"),
    (dict(pretrain_until=True), "must lie in (0, 1]"),
    (dict(pretrain_until=float("nan")), "must lie in (0, 1]"),
    (dict(pretrain_until=0.9, pretrain_min_gain=-1e-3), "pretrain_min_gain must be a finite number >= 0"),
    (dict(pretrain_until=0.9, pretrain_min_gain=float("inf")), "pretrain_min_gain must be a finite number >= 0"),
])
def test_bad_thresholds_are_refused(kwargs, said):
    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        FeedbackConfig(**kwargs)


def test_the_defaults_and_the_published_configs():
    """The library defaults pre-train until aligned and use torch's betas for the forward
    optimizer (docs/user_guide.md, "Defaults"); the published runs keep a fixed count and their betas."""
    cfg = FeedbackConfig()
    assert (cfg.pretrain_until, cfg.pretrain_epochs, cfg.pretrain_min_gain) == ("auto", None, 1e-3)
    module = DFCModule(MLP([8, 10, 3]))
    assert (module.dfc_feedback_config.pretrain_until, module.dfc_feedback_config.pretrain_epochs) == (0.95, 100)
    assert module.dfc_schedule.pretrain_epochs == 100
    for variant in ("strong_dfc_ss",):  # Strong-DFC: Condition 2 holds only in part, a fixed count
        strong = DFCModule(MLP([8, 10, 3]), variant=variant).dfc_feedback_config
        assert (strong.pretrain_until, strong.pretrain_epochs) == (None, 10)
    assert FeedbackConfig(pretrain_until=None).resolved(strong=False).pretrain_epochs == 10
    assert FeedbackConfig(pretrain_epochs=7).resolved(strong=False).pretrain_epochs == 7
    forward, feedback, pretrain = module.configure_optimizers()
    assert forward.defaults["betas"] == (0.9, 0.999)
    assert forward.param_groups[0]["lr"] == pytest.approx(9.266e-5 / 0.07794)  # normalize_lr: lr / lambda
    assert feedback.defaults["betas"] == pretrain.defaults["betas"] == (0.99, 0.99)
    published = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "mnist_dfc.yaml").read_text())
    init = published["model"]["init_args"]
    assert init["feedback"]["pretrain_until"] is None and init["feedback"]["pretrain_epochs"] == 10
    assert init["forward_optimizer"]["init_args"]["betas"] == [0.99, 0.99]


@pytest.mark.parametrize("strong", [False, True], ids=["dfc", "strong_dfc"])
def test_the_low_condition_2_advice_fits_the_method(strong):
    """DFC's weak nudge needs Condition 2 (the summary points to pretrain_until below 0.95);
    Strong-DFC's strong feedback does not (its published pre-training reaches about 0.24)."""
    from types import SimpleNamespace

    from lightning_dfc.shell.summary import _pretraining_line

    module = SimpleNamespace(_dfc_pretrain_condition_2=0.24, dfc_feedback_config=FeedbackConfig(pretrain_until=None),
                             dfc_schedule=SimpleNamespace(pretrain_epochs=1), dfc_method=SimpleNamespace(strong=strong))
    line = _pretraining_line(module)
    assert "Condition 2 = 0.240" in line
    assert ("see feedback.pretrain_until" in line) is not strong
    assert ("strong feedback does not need Condition 2" in line) is strong
