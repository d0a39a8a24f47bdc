"""float32 without the precision loss: the deviation-form simulation against float64.

Late in training the output nudge delta = -lambda dL/dr_L is ~1e-7 of the activations, so the
teaching signal phi(v) - phi(v^B) is a difference of nearly equal numbers. The library simulates
deviations from the feedforward pass and forms every difference with cancellation-free
identities; these tests check that a float32 update then equals the float64 one on a trained
network, and that the naive absolute-voltage simulation (the authors' formulation) does not:
that is what makes the first test meaningful.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lightning_dfc import MLP
from lightning_dfc.core.activations import Activation
from lightning_dfc.core.config import SimulationConfig
from lightning_dfc.core.dynamics import feedforward, output_jacobian
from lightning_dfc.core.network import DFCNetwork
from lightning_dfc.core.methods import forward_update
from lightning_dfc.core.losses import output_delta

pytestmark = pytest.mark.usefixtures("one_thread")

LAMBDA = 0.07794  # the paper's MNIST target stepsize
# the paper's MNIST wake dynamics, shortened
CFG = SimulationConfig(dt=0.02, steps=400, k_p=2.0, alpha=1.389e-3, tau_v=0.2)


def cosine(a, b) -> float:
    flat = lambda ts: torch.cat([t.flatten().double() for t in ts])  # noqa: E731
    return F.cosine_similarity(flat(a), flat(b), dim=0).item()


@pytest.fixture(scope="module")
def trained():
    """A 32-64-64-64-10 tanh network trained (by BP) to a cross-entropy of ~2e-4 on its batch,
    with feedback Q = mean J^T (aligned feedback, as sleep-phase training produces)."""
    torch.manual_seed(0)
    net = DFCNetwork(MLP([32, 64, 64, 64, 10], activation="tanh"), feedback_init="weight_product").double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, dtype=torch.float64, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(600):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        params = net.params()
        jt = output_jacobian(params, feedforward(params, x).v).mean(0).T
        for q, block in zip(net.feedback, torch.split(jt, [w.shape[0] for w in params.weights])):
            q.copy_(block)
    assert loss.item() < 1e-3  # "late in training": the nudge is tiny
    return net, x, y


@pytest.mark.parametrize("variant", ["dfc", "dfc_ss", "dfc_ssa"])
def test_float32_update_equals_float64_late_in_training(trained, variant):
    net, x, y = trained
    exact = forward_update(variant, net.params(), x, y, "cross_entropy", LAMBDA,
                           dataclasses.replace(CFG, outer_every=1, early_stop=False))
    net32 = copy.deepcopy(net).float()
    fast = forward_update(variant, net32.params(), x.float(), y, "cross_entropy", LAMBDA, CFG)
    assert all(t.dtype == torch.float32 for t in fast.tensors())
    assert cosine(fast.tensors(), exact.tensors()) >= 0.9999
    # not just the direction: the size too
    norm32 = torch.cat([t.flatten() for t in fast.tensors()]).double().norm()
    norm64 = torch.cat([t.flatten() for t in exact.tensors()]).norm()
    assert abs(norm32 / norm64 - 1) < 1e-3


def naive_absolute_dfc(params, x, delta, cfg):
    """The authors' formulation: absolute voltages, phi(v) - phi(W r + b) at every step
    (proactive controller, instantaneous transmission, tanh hidden layers, linear output)."""
    W, b, Q = params.weights, params.biases, params.feedback
    n = len(W)
    phi = [torch.tanh] * (n - 1) + [lambda a: a]
    v, pre = [], x
    for i in range(n):
        v.append(pre @ W[i].T + b[i])
        pre = phi[i](v[i])
    r = [phi[i](v[i]) for i in range(n)]
    target = r[-1] + delta
    u, u_int = torch.zeros_like(r[-1]), torch.zeros_like(r[-1])
    grads = [torch.zeros_like(w) for w in W]
    for t in range(cfg.steps):
        if t > 0:
            e = target - r[-1]
            u_int = u_int + cfg.dt * (e - cfg.alpha * u)
            u = u_int + cfg.k_p * e
            pre = x
            for i in range(n):
                v[i] = v[i] + cfg.dt / cfg.tau_v * (u @ Q[i].T + pre @ W[i].T + b[i] - v[i])
                r[i] = phi[i](v[i])
                pre = r[i]
        pre = x
        for i in range(n):
            grads[i] -= (phi[i](v[i]) - phi[i](pre @ W[i].T + b[i])).T @ pre
            pre = r[i]
    return grads


def test_absolute_voltage_float32_loses_the_update(trained):
    """The same comparison fails for the naive formulation: the test above can fail."""
    net, x, y = trained
    cfg = dataclasses.replace(CFG, steps=200)
    exact = forward_update("dfc", net.params(), x, y, "cross_entropy", LAMBDA,
                           dataclasses.replace(cfg, outer_every=1, early_stop=False)).weights
    delta = output_delta(feedforward(net.params(), x).r[-1], y, "cross_entropy", LAMBDA)
    naive64 = naive_absolute_dfc(net.params(), x, delta, cfg)
    assert cosine(naive64, exact) > 1 - 1e-9  # same rule, same numbers in float64
    net32 = copy.deepcopy(net).float()
    naive32 = naive_absolute_dfc(net32.params(), x.float(), delta.float(), cfg)
    assert cosine(naive32, exact) < 0.99


ACTIVATIONS = ["tanh", "sigmoid", "relu", "leaky_relu", "linear"]


def reference_points(act: Activation, n_offsets: int):
    """500 reference voltages a ~ N(0, 4) (away from ReLU kinks) and ``n_offsets`` tensors of
    offsets ~ 1e-7 N(0, 1), float64."""
    g = torch.Generator().manual_seed(0)
    a = 2 * torch.randn(500, dtype=torch.float64, generator=g)
    offsets = [1e-7 * torch.randn(500, dtype=torch.float64, generator=g) for _ in range(n_offsets)]
    if act.name in ("relu", "leaky_relu"):  # kinks: away from them phi is linear
        keep = a.abs() > 1e-6
        a, offsets = a[keep], [o[keep] for o in offsets]
    return a, offsets


def taylor_shift(act: Activation, a, x):
    """phi(a + x) - phi(a) by another route, phi'(a) x + phi''(a) x^2 / 2 (exact to 1e-14 for
    |x| ~ 1e-7; phi'' by central differences, 0 for the piecewise-linear activations)."""
    if act.name in ("relu", "leaky_relu"):
        return act.derivative(a) * x
    h = 1e-4
    second = (act(a + h) - 2 * act(a) + act(a - h)) / h**2
    return act.derivative(a) * x + 0.5 * second * x**2


def max_rel_err(got, want) -> float:
    return float(((got.double() - want).abs() / want.abs().clamp_min(1e-30)).max())


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_deviation_keeps_relative_precision_in_float32(name):
    act = Activation(name)
    v, (dv,) = reference_points(act, 1)
    want = taylor_shift(act, v, dv)
    torch.testing.assert_close(act.deviation(v, act(v), dv)[1], want, rtol=1e-8, atol=1e-22)
    _, dr32 = act.deviation(v.float(), act(v.float()), dv.float())
    assert max_rel_err(dr32, want) < 1e-5  # float32 keeps ~6 digits of a 1e-7 deviation
    plain = act(v.float() + dv.float()) - act(v.float())  # plain subtraction: none
    assert max_rel_err(plain, want) > 1e-2 or name == "linear"


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_deviation_difference_keeps_relative_precision_in_float32(name):
    """phi(a + x) - phi(a + y) for x, y ~ 1e-7 (the teaching signal of a hidden layer)."""
    act = Activation(name)
    a, (x, y) = reference_points(act, 2)
    want = taylor_shift(act, a, x) - taylor_shift(act, a, y)

    def signal(dtype):
        a_, x_, y_ = a.to(dtype), x.to(dtype), y.to(dtype)
        r_ = act(a_)
        dr = act.rate_deviation(a_, r_, x_)
        return act.deviation_difference(a_, r_, x_, dr, y_).double()

    torch.testing.assert_close(signal(torch.float64), want, rtol=1e-7, atol=1e-22)
    assert max_rel_err(signal(torch.float32), want) < 1e-4
