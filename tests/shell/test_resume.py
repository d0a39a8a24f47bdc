"""Resuming training from a checkpoint of another variant, network or schedule is refused with a
message saying what differs (issue 13); a new schedule only when the config permits it."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import tiny_loader, tiny_sleep
from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig
from lightning_dfc.shell.resume import ResumeError

SLEEP = tiny_sleep()
_data = tiny_loader


def _model(variant="dfc", sizes=(8, 10, 3), pretrain_epochs=1, **feedback):
    torch.manual_seed(0)
    return DFCModule(MLP(list(sizes)), variant=variant, target_stepsize=0.1, dynamics=SimulationConfig(steps=20),
                     feedback=FeedbackConfig(pretrain_epochs=pretrain_epochs, simulation=SLEEP, **feedback))


def _trainer(tmp_path, epochs, **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", precision="64-true", logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume")
    callback = ModelCheckpoint(dirpath=path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(path, 1, callbacks=[callback]).fit(_model(), _data())
    return next((path / "ckpt").glob("epoch=1-*.ckpt"))  # after the first sleep epoch


@pytest.mark.parametrize("changed, said", [
    (dict(variant="dfc_ss"), "variant 'dfc' (now 'dfc_ss')"),
    (dict(variant="dfc_fixed"), "variant 'dfc' (now 'dfc_fixed')"),
    (dict(sizes=(8, 12, 3)), "network sizes [8, 10, 3] (now [8, 12, 3])"),
    (dict(pretrain_epochs=3), "schedule pretrain_epochs=1 (now 3)"),
    (dict(sleep_after=0), "sleep_after=2 (now 0)"),
], ids=["variant", "fixed-variant", "sizes", "pretrain", "sleep-after"])
def test_an_incompatible_resume_is_refused(checkpoint, changed, said, tmp_path):
    model = _model(**changed)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot resume training from this checkpoint") as info:
        _trainer(tmp_path, 2).fit(model, _data(), ckpt_path=checkpoint)
    assert said in str(info.value)
    if "schedule" in said or "sleep_after" in said:
        assert "feedback.resume_with_new_schedule: true" in str(info.value)
    if "sizes" not in said:
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _fit(tmp_path, model, epochs, ckpt_path=None):
    trainer = _trainer(tmp_path, epochs)
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return trainer


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_a_resume_with_the_same_settings_is_the_uninterrupted_run(checkpoint, tmp_path):
    """Resumed after the first sleep epoch: bit for bit the run that was never stopped (the
    checkpoint's weights and optimizer states, the noise seeded per epoch, the schedule's place)."""
    resumed = _fit(tmp_path / "resumed", _model(), 2, checkpoint)
    uninterrupted = _model()
    whole = _fit(tmp_path / "whole", uninterrupted, 2)
    assert resumed.current_epoch == whole.current_epoch == 9  # 1 pre-training + 2 x (1 + wake + 2)
    assert _same(resumed.lightning_module, uninterrupted)
    start = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert not torch.equal(start["network.0.weight"], uninterrupted.network[0].weight)  # it did train on


def test_a_new_schedule_when_permitted(checkpoint, tmp_path):
    """With resume_with_new_schedule the run continues under the new schedule: here (no sleep
    epochs after a wake epoch) the epochs before the checkpoint are the same under both, so the
    resumed run is the uninterrupted run of the new schedule."""
    permitted = _model(sleep_after=0, resume_with_new_schedule=True)
    resumed = _fit(tmp_path / "resumed", permitted, 2, checkpoint)
    assert [permitted.dfc_schedule(e).phase.value for e in range(resumed.current_epoch)] == [
        "pretrain", "sleep", "wake", "sleep", "wake"]
    fresh = _model(sleep_after=0)
    _fit(tmp_path / "fresh", fresh, 2)
    assert _same(permitted, fresh)


def test_loading_weights_for_inference_is_not_a_resume(checkpoint, tmp_path):
    """load_from_checkpoint with other settings (here another variant) is not refused: it loads the
    checkpoint's weights into the new module, which then predicts with them."""
    loaded = DFCModule.load_from_checkpoint(checkpoint, network=MLP([8, 10, 3]), variant="dfc_ss",
                                            weights_only=False)
    assert loaded.dfc_variant == "dfc_ss"
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert state.keys() == loaded.state_dict().keys()
    assert all(torch.equal(state[k].to(v.dtype), v) for k, v in loaded.state_dict().items())  # (saved in float64)
    x = next(iter(_data()))[0]
    layers = [v.float() for k, v in sorted(state.items()) if k.startswith("network.")]
    w1, b1, w2, b2 = layers[1], layers[0], layers[3], layers[2]  # sorted: 0.bias, 0.weight, 2.bias, 2.weight
    expected = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(loaded(x), expected)


def test_a_changed_setting_is_named_and_refused(checkpoint, tmp_path):
    """Any DFC setting that differs from the checkpoint's is named, one line each (old -> new),
    and refused, with the opt-in named; the weights stay untouched."""
    model = DFCModule(MLP([8, 10, 3]), variant="dfc", target_stepsize=0.2, dynamics=SimulationConfig(steps=20, dt=0.01),
                      feedback=FeedbackConfig(pretrain_epochs=1, simulation=SLEEP))
    with pytest.raises(ResumeError) as info:
        _trainer(tmp_path, 2).fit(model, _data(), ckpt_path=checkpoint)
    message = str(info.value)
    assert "\n  dynamics.dt: 0.02 -> 0.01" in message and "\n  target_stepsize: 0.1 -> 0.2" in message
    assert "resume_with_changes: true" in message and "variant" not in message


def test_resume_with_changes_names_them_and_runs_with_them(checkpoint, tmp_path, caplog):
    model = DFCModule(MLP([8, 10, 3]), variant="dfc", target_stepsize=0.1, dynamics=SimulationConfig(steps=20, dt=0.01),
                      feedback=FeedbackConfig(pretrain_epochs=1, simulation=SLEEP), resume_with_changes=True)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer = _fit(tmp_path, model, 2, checkpoint)
    said = [r.getMessage() for r in caplog.records]
    assert "lightning-dfc: resuming with a changed setting: dynamics.dt: 0.02 -> 0.01" in said
    assert trainer.current_epoch == 9 and model.dfc_dynamics.dt == 0.01


def test_a_checkpoint_without_recorded_settings_is_compared_as_before(checkpoint, tmp_path):
    """Checkpoints written before the settings were recorded: only variant, sizes and schedule
    are compared (a changed dt passes, as it did)."""
    old = torch.load(checkpoint, weights_only=False)
    del old["dfc"]["settings"]
    torch.save(old, tmp_path / "old.ckpt")
    model = DFCModule(MLP([8, 10, 3]), variant="dfc", target_stepsize=0.1, dynamics=SimulationConfig(steps=20, dt=0.01),
                      feedback=FeedbackConfig(pretrain_epochs=1, simulation=SLEEP))
    assert _fit(tmp_path, model, 2, tmp_path / "old.ckpt").current_epoch == 9


def test_a_changed_learning_rate_is_named_and_used(checkpoint, tmp_path, caplog):
    """A resume restores the optimizers' states, their learning rates included: a learning rate
    configured differently from the checkpoint's run is named (old -> new) and set back to this
    run's value once the states are restored; an unchanged one gives no notice."""
    from lightning_dfc.shell.configuration import FORWARD_BETAS, default_optimizer

    faster = default_optimizer(2e-3, 9.446e-8, FORWARD_BETAS)  # the default forward optimizer, another lr
    model = DFCModule(MLP([8, 10, 3]), variant="dfc", target_stepsize=0.1, dynamics=SimulationConfig(steps=20),
                      feedback=FeedbackConfig(pretrain_epochs=1, simulation=SLEEP), forward_optimizer=faster)
    seen = []

    class LearningRates(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        _trainer(tmp_path, 2, callbacks=[LearningRates()]).fit(model, _data(), ckpt_path=checkpoint)
    said = [r.getMessage() for r in caplog.records if "changed optimizer setting" in r.getMessage()]
    old = torch.load(checkpoint, weights_only=False)["dfc"]["settings"]["optimizers.forward.lr"]
    assert said == [f"lightning-dfc: resuming with a changed optimizer setting: optimizers.forward.lr: {old!r} -> "
                    f"{2e-3 / 0.1!r}"]
    assert seen and all(lr == pytest.approx(2e-3 / 0.1) for lr in seen)  # normalize_lr: lr / lambda
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        _fit(tmp_path / "same", _model(), 2, checkpoint)
    assert not [r for r in caplog.records if "resuming with a changed" in r.getMessage()]
