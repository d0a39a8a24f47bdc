"""The loop around the updates, unit by unit: where the feedback weight decay acts, the clipping
groups, when the simulations stop early, and the settings' validation.

(Against the authors' code these are checked together in ``tests/reference/test_reference.py``.)
"""

from __future__ import annotations

import functools

import pytest
import torch

from lightning_dfc import MLP, DFCModule, FeedbackConfig, SimulationConfig, UpdateConfig
from lightning_dfc.core.clipping import clip_groups, forward_clip_groups
from lightning_dfc.core.numerics import EXACT, FAST
from lightning_dfc.core.methods import forward_update

DT = torch.float64


def module(variant: str = "dfc", **kwargs) -> DFCModule:
    torch.manual_seed(0)
    return DFCModule(MLP([6, 5, 4, 3]), variant=variant, **kwargs).double()


def test_feedback_weight_decay_is_the_optimizers() -> None:
    model = module(feedback=FeedbackConfig(weight_decay=0.25))
    _, feedback, pretrain = model.configure_optimizers()
    assert all(g["weight_decay"] == 0.25 for opt in (feedback, pretrain) for g in opt.param_groups)
    # and not part of the update the rule computes (it would be clipped with it)
    x = torch.randn(4, 6, dtype=DT)
    zero_q = module(feedback=FeedbackConfig(weight_decay=0.25))
    grads, _ = zero_q.dfc_sleep_update(x, torch.zeros(4, dtype=torch.long), pretraining=False,
                                       generator=torch.Generator().manual_seed(1))
    plain, _ = module(feedback=FeedbackConfig(weight_decay=0.0)).dfc_sleep_update(
        x, torch.zeros(4, dtype=torch.long), pretraining=False, generator=torch.Generator().manual_seed(1))
    for a, b in zip(grads, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_feedback_weight_decay_given_twice_is_refused() -> None:
    adam = functools.partial(torch.optim.Adam, lr=1e-3, weight_decay=0.5)
    with pytest.raises(ValueError, match="weight decay in one place"):
        module(feedback=FeedbackConfig(weight_decay=1e-3), feedback_optimizer=adam).configure_optimizers()
    # the same value in both places, or only in the optimizer, is fine
    module(feedback=FeedbackConfig(weight_decay=0.5), feedback_optimizer=adam).configure_optimizers()
    opts = module(feedback=FeedbackConfig(weight_decay=0.0), feedback_optimizer=adam).configure_optimizers()
    assert opts[1].param_groups[0]["weight_decay"] == 0.5


def test_clip_groups_scale_jointly_like_torch() -> None:
    a, b, c = torch.full((3,), 2.0, dtype=DT), torch.full((4,), 0.1, dtype=DT), torch.full((2,), 0.01, dtype=DT)
    reference = [t.clone().requires_grad_() for t in (a, b)]
    for p, g in zip(reference, (a, b)):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(reference, 1.0)
    groups = [[a, b], [c]]
    assert clip_groups(groups, 1.0) == 1  # [a, b] is clipped as one group, c is not
    torch.testing.assert_close(a, reference[0].grad, rtol=0, atol=0)
    torch.testing.assert_close(b, reference[1].grad, rtol=0, atol=0)
    assert torch.equal(c, torch.full((2,), 0.01, dtype=DT))
    assert clip_groups(groups, None) == 0


@pytest.mark.parametrize(("variant", "forward", "feedback"), [
    ("dfc", "tensor", "all"), ("dfc_ss_fixed", "tensor", "all"), ("dfa", "tensor", "all"),
    ("strong_dfc_ss", "layer", "layer"),
])
def test_clip_groups_default_to_the_variants_code_base(variant: str, forward: str, feedback: str) -> None:
    model = module(variant)
    assert (model.dfc_forward_clip_grouping, model.dfc_feedback_clip_grouping) == (forward, feedback)
    model = module(variant, updates=UpdateConfig(clip_grouping="layer"), feedback=FeedbackConfig(clip_grouping="all"))
    assert (model.dfc_forward_clip_grouping, model.dfc_feedback_clip_grouping) == ("layer", "all")


def test_forward_clip_groups_follow_the_layers() -> None:
    model = module(updates=UpdateConfig(clip_grouping="layer"))
    for p in model.dfc_net.forward_parameters():
        p.grad = torch.ones_like(p)
    groups = forward_clip_groups(model.dfc_net, model.dfc_forward_clip_grouping)
    assert [[tuple(g.shape) for g in group] for group in groups] == [[(5, 6), (5,)], [(4, 5), (4,)], [(3, 4), (3,)]]
    model = module()
    for p in model.dfc_net.forward_parameters():
        p.grad = torch.ones_like(p)
    assert len(forward_clip_groups(model.dfc_net, model.dfc_forward_clip_grouping)) == 6


def test_exact_numerics_simulate_every_step_and_fast_ones_stop_early_within_their_bound() -> None:
    """exact: every Euler step, steady-state and continuous rules alike (as the authors). fast:
    both stop once settled, and the update stays within the bound of the fast numerics."""
    model = module()
    params = model.dfc_net.params()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, dtype=DT, generator=g), torch.randint(0, 3, (8,), generator=g)
    cfg = SimulationConfig(steps=1000, alpha=0.5)  # every lever unset: the numerics preset decides
    assert cfg.early_stop is None
    for variant in ("dfc_ss", "dfc"):
        exact = forward_update(variant, params, x, y, "cross_entropy", 0.1, EXACT.resolve(cfg))
        assert exact.stats["steps"] == 999
        fast = forward_update(variant, params, x, y, "cross_entropy", 0.1, FAST.resolve(cfg))
        assert fast.stats["steps"] < 999
        for a, b in zip(fast.tensors(), exact.tensors()):
            assert float((a - b).norm()) <= 1e-3 * float(b.norm())


@pytest.mark.parametrize(("cls", "field", "value"), [
    (UpdateConfig, "clip_grouping", "all"),
    (FeedbackConfig, "clip_grouping", "tensor"),
    (FeedbackConfig, "pretrain_mode", "authors"),
])
def test_bad_loop_settings_are_refused(cls, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_strong_pretraining_uses_the_linear_error_as_published() -> None:
    """pretrain_mode='published' (default): the controller sees r* - r_L in pre-training and
    r* - softmax(r_L) in sleep epochs; 'clean' uses the softmax error in both."""
    x, y = torch.randn(6, 6, dtype=DT), torch.randint(0, 3, (6,))
    sim = SimulationConfig(dt=0.002, steps=30, k_p=0.1, alpha=0.5, tau_v=0.005, proactive=True, sigma=0.01)
    published = module("strong_dfc_ss", feedback=FeedbackConfig(simulation=sim, pretrain_mode="published"))
    clean = module("strong_dfc_ss", feedback=FeedbackConfig(simulation=sim, pretrain_mode="clean"))

    def grads(model, pretraining):
        return model.dfc_sleep_update(x, y, pretraining, torch.Generator().manual_seed(3))[0]

    for a, b in zip(grads(published, False), grads(clean, False)):  # sleep epochs: the same
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    differ = [not torch.allclose(a, b) for a, b in zip(grads(published, True), grads(clean, True))]
    assert all(differ)


def test_a_partial_sleep_simulation_keeps_the_sleep_defaults_as_under_the_cli() -> None:
    """FeedbackConfig(simulation={...}) completes the dict from sleep_defaults(), as LightningCLI
    completes a YAML section from the field's default."""
    from lightning_dfc import sleep_defaults

    sim = FeedbackConfig(simulation={"sigma": 0.02, "steps": 30}).simulation
    expected = sleep_defaults()
    assert (sim.sigma, sim.steps) == (0.02, 30)
    assert (sim.tau_apical, sim.proactive, sim.dt, sim.alpha) == (
        expected.tau_apical, expected.proactive, expected.dt, expected.alpha)
