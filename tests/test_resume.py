"""Resuming training from a checkpoint of another variant, network or schedule is refused with a
message saying what differs (issue 13); a new schedule only when the config permits it."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import tiny_loader, tiny_sleep
from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig

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


def test_a_new_schedule_when_permitted_and_the_same_settings_always(checkpoint, tmp_path):
    permitted = _model(sleep_after=0, resume_with_new_schedule=True)
    _trainer(tmp_path, 2).fit(permitted, _data(), ckpt_path=checkpoint)
    same = _model()
    _trainer(tmp_path, 2).fit(same, _data(), ckpt_path=checkpoint)


def test_loading_weights_for_inference_is_not_a_resume(checkpoint):
    loaded = DFCModule.load_from_checkpoint(checkpoint, network=MLP([8, 10, 3]), weights_only=False)
    assert loaded.dfc_variant == "dfc"
