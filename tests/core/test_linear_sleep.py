"""The linearised, reduced sleep phase (``lightning_dfc.core.linear_sleep``, the fast numerics'
``linear_sleep`` lever) against the full simulation and against theory.

* Given the very noise increments the full simulation draws (explicit ``noise``), its feedback
  sum equals the full float64 simulation's up to the linearisation: a relative error that is
  first order in sigma (the neglected terms are second order in the deviations), so it shrinks
  tenfold with a tenfold smaller sigma.
* Its parts separately: the Jacobians are ``torch.func``'s, the orthogonal draw's factor squares
  to the controls' Gram matrix even where that is singular.
* Drawn noise: ``tests/core/test_numerics.py`` compares the fast sleep update's mean and spread over
  60 seeds with the exact (published) numerics, for the MNIST and autoencoder sleep phases.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import jacrev

from lightning_dfc import MLP, DFCNetwork, sleep_defaults
from lightning_dfc.core.dynamics import feedforward, simulate
from lightning_dfc.core.linear_sleep import (
    _control_factor,
    _jacobians,
    linear_sleep,
    linear_sleep_applies,
    simulate_sleep_linear,
)
from lightning_dfc.core.numerics import EXACT, FAST
from lightning_dfc.core.rules import FeedbackRule, feedback_gradients, feedback_update


def network(sizes, activation="tanh", seed=0):
    torch.manual_seed(seed)
    return DFCNetwork(MLP(sizes, activation=activation)).double()


def full_and_linear(net, x, cfg, seed=5):
    """The exact full simulation's feedback sum and the linear sleep's with the same increments
    (exact numerics draw one (B, S) Gaussian per step from the generator)."""
    params = net.params()
    ff = feedforward(params, x)
    cfg = EXACT.resolve(cfg)
    full = simulate(params, x, ff, None, cfg, delta=torch.zeros_like(ff.r[-1]), accumulate_feedback=True,
                    generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed)
    width = sum(w.shape[0] for w in params.weights)
    noise = torch.stack([torch.randn((x.shape[0], width), dtype=torch.float64, generator=generator)
                         for _ in range(cfg.steps - 1)])
    return full, linear_sleep(params, ff, cfg, noise=noise)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# strong_dfc's DFC command (examples/mnist_dfc_noisy_dynamics.yaml): sigma 0.035, 23x DFC's
STRONG_DFC_SLEEP = {"dt": 0.0011421804343878519, "steps": 44, "k_p": 0.0713515876863314, "alpha": 0.39857902933813705,
                    "tau_v": 0.005870467170683501, "tau_apical": 0.1404664564483908, "proactive": True,
                    "sigma": 0.035483751742735006}
SETTINGS = {  # name: (change of the DFC paper's sleep phase, bound on the relative error at its sigma)
    "published": ({}, 2e-3),
    "delayed transmission": ({"inst_transmission": False}, 2e-3),
    "proactive": ({"proactive": True}, 2e-3),
    "integral control": ({"k_p": 0.0, "alpha": 0.5}, 2e-3),
    "output noise": ({"sigma_output": 5e-3}, 2e-3),
    "strong_dfc's DFC sleep": (STRONG_DFC_SLEEP, 4e-2),  # measured 2.7e-2
}


@pytest.mark.parametrize(("change", "bound"), list(SETTINGS.values()), ids=list(SETTINGS))
def test_equals_the_full_simulation_to_first_order_in_sigma(change, bound):
    net = network([784, 256, 256, 256, 10])
    x = torch.rand(16, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors = {}
    for scale in (1.0, 0.1):
        cfg = dataclasses.replace(sleep_defaults(), **change)
        cfg = dataclasses.replace(cfg, sigma=cfg.sigma * scale, sigma_output=None if cfg.sigma_output is None
                                  else cfg.sigma_output * scale)
        full, lin = full_and_linear(net, x, cfg)
        errors[scale] = rel(lin.feedback_sum, full.feedback_sum)
        assert lin.finite
        assert rel(lin.u, full.u) < 1.5 * bound * scale
    assert errors[1.0] < bound, errors
    # second-order neglected terms: the relative error is proportional to sigma
    assert 7 < errors[1.0] / errors[0.1] < 13, errors


def test_narrow_hidden_layer_uses_the_qr_basis():
    """A hidden layer narrower than the output (J_i J_i^T singular): V_i from a QR of J_i^T."""
    net = network([6, 3, 8], activation="tanh", seed=2)
    x = torch.rand(5, 6, dtype=torch.float64)
    cfg = dataclasses.replace(sleep_defaults(), sigma=1e-4)
    full, lin = full_and_linear(net, x, cfg)
    assert rel(lin.feedback_sum, full.feedback_sum) < 1e-3


def test_jacobians_are_those_of_the_output():
    net = network([7, 5, 4, 3], activation="tanh", seed=3)
    params = net.params()
    x = torch.rand(2, 7, dtype=torch.float64)
    ff = feedforward(params, x)
    jacs = _jacobians(params, list(ff.v))
    for i in range(params.num_layers):
        def output(v_i, b, i=i):
            pre = v_i
            r = params.activations[i](pre)
            for j in range(i + 1, params.num_layers):
                r = params.activations[j](r @ params.weights[j].T + params.biases[j])
            return r
        for b in range(2):
            torch.testing.assert_close(jacs[i][b], jacrev(output)(ff.v[i][b], b))


def test_control_factor_squares_to_the_gram_matrix_even_when_singular():
    backward = torch.randn(3, 4, 5, dtype=torch.float64)  # 3 time steps, 5 dims: rank 3 per sample
    backward[:, 0] = 0.0  # and one sample without any control
    factor = _control_factor(backward)
    gram = torch.einsum("jbn,jbm->bnm", backward, backward)
    torch.testing.assert_close(factor @ factor.transpose(1, 2), gram)


def test_drawn_noise_is_reproducible_and_used():
    net = network([20, 12, 4])
    x = torch.rand(8, 20, dtype=torch.float64)
    cfg = FAST.resolve(sleep_defaults())
    a, _ = simulate_sleep_linear(net.params(), x, cfg, torch.Generator().manual_seed(0))
    b, stats = simulate_sleep_linear(net.params(), x, cfg, torch.Generator().manual_seed(0))
    c, _ = simulate_sleep_linear(net.params(), x, cfg, torch.Generator().manual_seed(1))
    assert a.dtype == torch.float64 and torch.equal(a, b) and rel(c, a) > 1e-2
    assert stats["steps"] == cfg.steps - 1 and stats["finite"] == 1.0 and 0 < stats["state_ratio"] < 1e-2


def test_feedback_update_dispatches_on_the_lever():
    net = network([20, 12, 4])
    x = torch.rand(8, 20, dtype=torch.float64)
    cfg = FAST.resolve(sleep_defaults())
    lin = feedback_update(net.params(), x, cfg, generator=torch.Generator().manual_seed(0))[0]
    direct = simulate_sleep_linear(net.params(), x, cfg, torch.Generator().manual_seed(0))[0]
    want = feedback_gradients(net.params(), direct, x.shape[0], cfg, FeedbackRule())
    full = feedback_update(net.params(), x, dataclasses.replace(cfg, linear_sleep=False),
                           generator=torch.Generator().manual_seed(0))[0]
    for got, expected, other in zip(lin, want, full, strict=True):
        assert torch.equal(got, expected) and not torch.equal(got, other)


def test_where_it_applies():
    cfg = FAST.resolve(sleep_defaults())
    assert linear_sleep_applies(cfg, None, True, 10) is None
    assert linear_sleep_applies(EXACT.resolve(sleep_defaults()), None, True, 10) == "linear_sleep off"
    assert "Strong-DFC" in linear_sleep_applies(cfg, None, False, 10)
    assert "tau_noise" in linear_sleep_applies(dataclasses.replace(cfg, tau_noise=0.05), None, True, 10)
    assert "tau_f" in linear_sleep_applies(cfg, 0.1, True, 10)
    assert "3 time points" in linear_sleep_applies(dataclasses.replace(cfg, steps=2), None, True, 10)
    assert "wide output" in linear_sleep_applies(cfg, None, True, 784)


def test_the_lever_is_validated():
    with pytest.raises(ValueError, match="linear_sleep must be"):
        dataclasses.replace(sleep_defaults(), linear_sleep="yes")
    assert FAST.linear_sleep and not EXACT.linear_sleep
