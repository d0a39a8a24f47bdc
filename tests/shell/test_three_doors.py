"""The three doors, DFCModule, DFCMixin and the plain lightning_dfc.DFC, train alike: the same
batches from the same weights give the same weights afterwards, with clipping and the learning
rate's division by lambda at work, in the wake and in the sleep (pre-training) phase."""

from __future__ import annotations

import copy
import functools
import inspect

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dfc import DFC, MLP, DFCMixin, DFCModule, SimulationConfig
from lightning_dfc.core.divergence import DivergenceError

DT = torch.float64
LR, LAMBDA, CLIP = 0.02, 0.1, 0.002
SETTINGS = dict(target_stepsize=LAMBDA, dynamics=SimulationConfig(steps=40, alpha=0.05),
                updates={"clip_norm": CLIP})  # small: most updates are clipped
ADAM = functools.partial(torch.optim.Adam, lr=LR, betas=(0.9, 0.999), eps=1e-8)


class Host(pl.LightningModule):
    """A user's own LightningModule, with its network in ``self.body``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body


class DFCHost(DFCMixin, Host):
    pass


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 8, generator=g, dtype=DT)
    y = x[:, :3].argmax(1)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]


def _fit(module: pl.LightningModule, max_epochs: int = 1) -> None:
    x = torch.cat([b[0] for b in _batches()])
    y = torch.cat([b[1] for b in _batches()])
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    pl.Trainer(max_epochs=max_epochs, precision="64-true", accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(module, loader)


@pytest.mark.parametrize("variant", ["dfc_fixed", "dfa"])
def test_the_three_doors_train_alike(variant):
    torch.manual_seed(0)
    network = MLP([8, 10, 3]).double()
    module = DFCModule(copy.deepcopy(network), variant=variant, forward_optimizer=ADAM, **SETTINGS)
    mixin = DFCHost(copy.deepcopy(network), dfc_network_attribute="body", dfc_variant=variant,
                    dfc_forward_optimizer=ADAM, **{f"dfc_{k}": v for k, v in SETTINGS.items()})
    model = copy.deepcopy(network)
    plain = DFC(model, variant=variant, **SETTINGS).to(DT)
    for door in (mixin.dfc_net, plain.net):  # the same feedback weights (DFA's are random)
        with torch.no_grad():
            for q, ref in zip(door.feedback, module.dfc_net.feedback):
                q.copy_(ref)
    _fit(module)
    _fit(mixin)
    opt = torch.optim.Adam(model.parameters(), lr=plain.forward_lr(LR), betas=(0.9, 0.999), eps=1e-8)
    clipped = 0
    for x, y in _batches():
        opt.zero_grad()
        plain.backward(x, y)
        clipped += plain.last_stats["clipped"]
        opt.step()
    assert plain.forward_lr(LR) == LR / LAMBDA  # DFC methods divide by lambda (updates.normalize_lr)
    assert clipped >= 3  # clipping was at work
    for a, b, c in zip(module.network.parameters(), mixin.body.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)
    assert not torch.equal(next(network.parameters()), next(model.parameters()))


def test_the_plain_door_refuses_and_stops_like_the_module():
    softmax_out = nn.Sequential(nn.Linear(8, 3), nn.Sigmoid()).double()
    for door in (lambda: DFC(softmax_out), lambda: DFCModule(softmax_out)):
        with pytest.raises(ValueError, match="output layer must be linear"):
            door()
    torch.manual_seed(0)
    dfc = DFC(MLP([8, 10, 3]).double(), variant="dfc_fixed", target_stepsize=0.1,
              dynamics=SimulationConfig(steps=50, k_p=200, sigma=0.001), updates={"max_diverged_batches": 2}).to(DT)
    x, y = _batches()[0]
    dfc.backward(x, y)  # diverges: skipped, counted
    assert dfc.last_stats["skipped"] is not None and dfc.diverged_in_a_row == 1
    with pytest.raises(DivergenceError, match="diverged on 2 consecutive batches.*Remedy"):
        dfc.backward(x, y)


def _settings_of(function, prefix: str = "") -> dict:
    """A door's keyword arguments (without ``prefix``) and their defaults."""
    out = {}
    for name, p in inspect.signature(function).parameters.items():
        if name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            out[name.removeprefix(prefix)] = p.default
    return out


def test_the_doors_take_the_same_settings_with_the_same_defaults():
    # the constructors spell their arguments out (jsonargparse and --help read them): they must not drift
    from lightning_dfc import DFCWrapper
    from lightning_dfc.shell.configuration import DFCConfiguration

    reference = _settings_of(DFCConfiguration.configure_dfc)
    shared = ("variant", "loss", "target_stepsize", "dynamics", "feedback", "updates", "numerics")
    lightning = ("forward_optimizer", "feedback_optimizer", "pretrain_optimizer", "resume_with_changes")
    doors = {"DFCModule": _settings_of(DFCModule.__init__), "DFCMixin": _settings_of(DFCMixin.__init__, "dfc_"),
             "DFCWrapper": _settings_of(DFCWrapper.__new__), "DFC": _settings_of(DFC.__init__)}
    for door, settings in doors.items():
        for name in shared + (() if door == "DFC" else lightning):
            assert name in settings and settings[name] == reference[name], (door, name)
    assert doors["DFCMixin"]["allow_untrained"] is doors["DFCWrapper"]["allow_untrained"] is False


def test_the_doors_sleep_alike():
    """A pre-training (sleep) epoch, then a wake epoch, through DFCModule and the plain DFC: the
    same noise (the module's per-epoch generator, seeded as it seeds it), the feedback updates
    clipped (feedback.clip_norm small) and decayed (feedback.weight_decay, the optimizer's) alike,
    then the same wake update from the trained feedback weights."""
    from lightning_dfc import FeedbackConfig

    torch.manual_seed(0)
    network = MLP([8, 10, 3]).double()
    feedback = FeedbackConfig(pretrain_epochs=1, pretrain_until=None, sleep_before=0, sleep_after=0,
                              clip_norm=1e-4, weight_decay=1e-3)
    settings = {**SETTINGS, "feedback": feedback}
    pretrain = functools.partial(torch.optim.Adam, lr=1e-2, betas=(0.99, 0.99), eps=1e-6)
    module = DFCModule(copy.deepcopy(network), variant="dfc", forward_optimizer=ADAM, pretrain_optimizer=pretrain,
                       **settings)
    model = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(module._dfc_epoch_seed(0) + 104_729)  # the module's, epoch 0, rank 0
    plain = DFC(model, variant="dfc", generator=generator, **settings).to(DT)
    with torch.no_grad():
        for q, ref in zip(plain.net.feedback, module.dfc_net.feedback):
            q.copy_(ref)
    before = [q.detach().clone() for q in plain.net.feedback]
    _fit(module)  # 1 wake epoch: Lightning epoch 0 pre-trains, epoch 1 is the wake epoch
    pre_opt = pretrain(plain.feedback_parameters(), weight_decay=1e-3)
    clipped = 0
    for x, _ in _batches():
        pre_opt.zero_grad()
        clipped += plain.sleep(x, pretraining=True)["clipped"]
        pre_opt.step()
    opt = torch.optim.Adam(model.parameters(), lr=plain.forward_lr(LR), betas=(0.9, 0.999), eps=1e-8)
    for x, y in _batches():
        opt.zero_grad()
        plain.backward(x, y)
        opt.step()
    assert clipped == 3  # every sleep batch clipped (all Q together: the DFC paper's grouping)
    assert not torch.equal(before[0], plain.net.feedback[0])
    for a, b in zip(module.dfc_net.feedback, plain.net.feedback, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for a, b in zip(module.network.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
