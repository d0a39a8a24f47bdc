"""The fast numerics' fused float32 states, their noise source and the rule that skips checks a
last-point simulation could never pass (core/state.py ``FusedState``, core/noise.py
``NoiseSource``, core/tail.py ``last_point_can_settle``).

* ``FusedState`` simulates the same dynamics as the cancellation-free ``DeviationState``: with
  the same noise increments both equal the float64 simulation to float32 precision, for every
  variant of the dynamics it accepts (instantaneous transmission or not, the apical filter,
  filtered noise, other activations, layers without bias).
* It is chosen only where its absolute voltages lose nothing that counts: no per-step teaching
  signals, no early-stop check, deviations far above float32's rounding.
* ``FusedSignalState``, the same coordinates with every step's teaching signals, is chosen for
  noisy dynamics with signals; its sums equal the float64 simulation's to float32 precision for
  both rules and every variant.
* ``NoiseSource`` draws the very increments of ``standard_noise`` from the same generator state.
* A last-point rule whose controller cannot settle by T skips its checks, and checking anyway
  would not have stopped it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_dfc import MLP, DFCNetwork, SimulationConfig
from lightning_dfc.core import dynamics, tail
from lightning_dfc.core.dynamics import feedforward, simulate
from lightning_dfc.core.noise import NoiseSource, standard_noise
from lightning_dfc.core.losses import output_delta, strong_target
from lightning_dfc.core.state import AbsoluteState, DeviationState, FusedSignalState, FusedState
from lightning_dfc.core.tail import OutputError, last_point_can_settle

pytestmark = pytest.mark.usefixtures("one_thread")

# the published Strong-DFC two-phase wake (examples/mnist_strong_dfc_ss.yaml), shortened
STRONG = SimulationConfig(dt=0.001, steps=300, k_p=2.0, alpha=0.008, tau_v=0.0355, noise="two_point",
                          early_stop=True, tolerance=1e-4, check_every=4, outer_every=10)
SLEEP = SimulationConfig(dt=0.0032, steps=120, k_p=0.07, alpha=0.99, tau_v=0.0072, tau_apical=0.13, sigma=0.15,
                         noise="two_point", early_stop=True, tolerance=1e-4, check_every=4, outer_every=10)


def network(sizes=(12, 16, 16, 5), activation="tanh", output_activation="linear", bias=True, seed=0):
    torch.manual_seed(seed)
    net = DFCNetwork(MLP(list(sizes), activation=activation, output_activation=output_activation, bias=bias),
                     feedback_init="weight_product").double()
    x = torch.randn(9, sizes[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return net.params(), x, torch.arange(9) % sizes[-1]


def as_float32(params):
    cast = lambda ts: tuple(None if t is None else t.float() for t in ts)  # noqa: E731
    return params._replace(weights=cast(params.weights), biases=cast(params.biases), feedback=cast(params.feedback))


def run(params, x, y, cfg, state_class=None, monkeypatch=None, seed=3):
    """One simulation towards the strong (softmax) target: the sleep rule's feedback sum when
    noisy, the last point when not; ``state_class`` forced when given."""
    if state_class is not None:
        monkeypatch.setattr(dynamics, "_state_class", lambda *args: state_class)
    ff = feedforward(params, x)
    target, _ = strong_target(ff.r[-1], y, "cross_entropy", 0.9)
    result = simulate(params, x, ff, target, cfg, output_error="softmax", accumulate_feedback=cfg.noisy,
                      final_state=not cfg.noisy, generator=torch.Generator().manual_seed(seed))
    monkeypatch is None or monkeypatch.undo()
    return [result.u, *result.dv, *([result.feedback_sum] if cfg.noisy else [])]


def relative(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


VARIANTS = [
    {},
    {"inst_transmission": False},
    {"tau_apical": 0.01},
    {"tau_noise": 0.02},
    {"proactive": False},
]


@pytest.mark.parametrize("variant,noisy", [(v, noisy) for v in VARIANTS for noisy in (False, True)
                                           if noisy or "tau_noise" not in v],  # a noise filter needs noise
                         ids=lambda v: ("-".join(f"{k}={v[k]}" for k in v) or "published") if isinstance(v, dict)
                         else ("noisy" if v else "noise-free"))
def test_fused_state_simulates_the_same_dynamics(variant, noisy, monkeypatch):
    """FusedState and DeviationState in float32 against the float64 simulation with the same
    two-point increments: both within float32 precision of it (and FusedState is the one chosen)."""
    cfg = dataclasses.replace(SLEEP if noisy else STRONG, **variant)
    params, x, y = network()
    truth = run(params, x, y, dataclasses.replace(cfg, dtype="float64"))
    p32, x32 = as_float32(params), x.float()
    ff32 = feedforward(p32, x32)
    target, _ = strong_target(ff32.r[-1], y, "cross_entropy", 0.9)
    chosen = dynamics._state_class(p32, x32, cfg, OutputError("softmax", target, None, ff32.r[-1]), False,
                                   dynamics._checks(cfg, False, cfg.noisy))
    assert chosen is FusedState
    fused = run(p32, x32, y, cfg, FusedState, monkeypatch)
    deviation = run(p32, x32, y, cfg, DeviationState, monkeypatch)
    for f, d, t in zip(fused, deviation, truth):
        assert f.dtype == torch.float32
        assert relative(f, t) < 1e-4
        assert relative(d, t) < 1e-4


@pytest.mark.parametrize("net", [dict(activation="sigmoid", output_activation="tanh"),
                                 dict(activation="linear"), dict(bias=False), dict(sizes=(12, 5))],
                         ids=["sigmoid-tanh", "linear", "no-bias", "one-layer"])
def test_fused_state_other_networks(net, monkeypatch):
    params, x, y = network(**net)
    truth = run(params, x, y, dataclasses.replace(SLEEP, dtype="float64"))
    fused = run(as_float32(params), x.float(), y, SLEEP, FusedState, monkeypatch)
    for f, t in zip(fused, truth):
        assert relative(f, t) < 1e-4


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_hidden_tanh_layers_run_in_sigmoid_coordinates(bias):
    """The hidden tanh layers' state is u = 2 v with sigmoid(u) in the next layer's input buffer
    (tanh(v) = 2 sigmoid(2 v) - 1 folded into the next weights); the output layer is left as it
    is. Read back, the state gives the deviations it was set to, and one noise-free step from
    the feedforward state with zero control stays there (the folded bias row is right)."""
    params, x, _ = network(bias=bias)
    p32 = as_float32(params)
    ff = feedforward(p32, x.float())
    state = FusedState(p32, ff, STRONG, "nonlinear_difference")
    assert state.scaled == [True, True, False]
    for i in range(2):
        torch.testing.assert_close(state.rates[i], torch.sigmoid(2 * ff.v[i]))
    state.step((torch.zeros(9, 5), None), want_signal=False)
    for dv in state.voltage_deviations():
        assert float(dv.abs().max()) < 1e-5
    for dr in state.rate_deviations():
        assert float(dr.abs().max()) < 1e-5
    gen = torch.Generator().manual_seed(5)
    dv = [0.1 * torch.randn(v.shape, generator=gen) for v in ff.v]
    dr = [torch.tanh(v + d) - r for v, d, r in zip(ff.v, dv, ff.r)]
    state.set_final(dv, dr)
    for got, want in zip(state.voltage_deviations(), dv):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for got, want in zip(state.rate_deviations()[:-1], dr[:-1]):  # the linear output's rate is its voltage
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def run_signals(params, x, y, cfg, rule, state_class=None, monkeypatch=None, seed=3):
    """One noisy simulation with the time-average rule's sums (and the sleep rule's feedback
    sum, as Strong-DFC's single phase): the signal sums, the outer sums and the feedback sum."""
    if state_class is not None:
        monkeypatch.setattr(dynamics, "_state_class", lambda *args: state_class)
    ff = feedforward(params, x)
    target, _ = strong_target(ff.r[-1], y, "cross_entropy", 0.9)
    result = simulate(params, x, ff, target, cfg, output_error="softmax", accumulate_forward=True,
                      accumulate_feedback=True, highpass_rate=0.05, rule=rule,
                      generator=torch.Generator().manual_seed(seed))
    monkeypatch is None or monkeypatch.undo()
    return [*result.signal_sum, *result.outer_sum[1:], result.feedback_sum, result.u, *result.dv]


SIGNAL_CASES = [({}, {}), ({"inst_transmission": False}, {}), ({"tau_apical": 0.01}, {}), ({"tau_noise": 0.02}, {}),
                ({"tau_apical": 0.01, "tau_noise": 0.02}, {}), ({"outer_every": 1}, {}), ({}, {"activation": "sigmoid", "output_activation": "tanh"}),
                ({}, {"bias": False}), ({}, {"sizes": (12, 5)})]


@pytest.mark.parametrize("rule", ["nonlinear_difference", "voltage_difference"])
@pytest.mark.parametrize("variant,net", SIGNAL_CASES,
                         ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) or "published")
def test_fused_signal_state_forms_the_same_signals(variant, net, rule, monkeypatch):
    """FusedSignalState's per-step teaching signals (formed in sigmoid coordinates, half the
    true ones for a hidden tanh layer) give the float64 simulation's sums with the same
    two-point increments to float32 precision, as the deviation form does; and it is the one
    chosen for noisy dynamics with signals."""
    cfg = dataclasses.replace(SLEEP, **variant)
    params, x, y = network(**net)
    truth = run_signals(params, x, y, dataclasses.replace(cfg, dtype="float64"), rule)
    p32, x32 = as_float32(params), x.float()
    ff32 = feedforward(p32, x32)
    target, _ = strong_target(ff32.r[-1], y, "cross_entropy", 0.9)
    chosen = dynamics._state_class(p32, x32, cfg, OutputError("softmax", target, None, ff32.r[-1]), True,
                                   dynamics._checks(cfg, True, True))
    assert chosen is FusedSignalState
    fused = run_signals(p32, x32, y, cfg, rule, FusedSignalState, monkeypatch)
    deviation = run_signals(p32, x32, y, cfg, rule, DeviationState, monkeypatch)
    for f, d, t in zip(fused, deviation, truth):
        assert f.dtype == torch.float32
        assert relative(f, t) < 1e-4
        assert relative(d, t) < 1e-4


def test_fused_signal_state_signals_are_the_rate_differences():
    """One step from the feedforward state: the returned signal times ``signal_scales`` is
    phi(v) - phi(v^B) of the state it leaves, layer by layer."""
    params, x, _ = network()
    p32 = as_float32(params)
    ff = feedforward(p32, x.float())
    state = FusedSignalState(p32, ff, SLEEP, "nonlinear_difference")
    assert state.signal_scales == [2.0, 2.0, 1.0]
    apical = [0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) for i, v in enumerate(ff.v)]
    signals = [None if s is None else s.clone() for s in state.step(tuple(apical), want_signal=True)]
    dv, dr = state.voltage_deviations(), state.rate_deviations()
    assert SLEEP.inst_transmission  # layer i's basal input: layer i - 1's new rates
    before = [None] + [r + d for r, d in zip(ff.r[:-1], dr[:-1])]
    for i, act in enumerate(p32.activations):
        v = ff.v[i] + dv[i]
        v_basal = ff.v[0] if i == 0 else p32.weights[i] @ before[i].T
        if i > 0:
            v_basal = (v_basal + p32.biases[i].unsqueeze(1)).T
        torch.testing.assert_close(signals[i] * state.signal_scales[i], act(v) - act(v_basal), atol=1e-6, rtol=0)


def test_fused_state_rejects_teaching_signals():
    params, x, _ = network()
    p32 = as_float32(params)
    state = FusedState(p32, feedforward(p32, x.float()), STRONG, "nonlinear_difference")
    with pytest.raises(ValueError, match="teaching signals"):
        state.step((torch.zeros(9, 5), None), want_signal=True)


def test_the_state_is_chosen_by_what_the_simulation_needs():
    params, x, y = network()
    p32, x32 = as_float32(params), x.float()
    ff = feedforward(p32, x32)
    strong, _ = strong_target(ff.r[-1], y, "cross_entropy", 0.9)
    strong_error = OutputError("softmax", strong, None, ff.r[-1])
    weak_error = OutputError("linear", None, output_delta(ff.r[-1], y, "cross_entropy", 1e-6), ff.r[-1])
    choose = dynamics._state_class
    assert choose(params, x, SLEEP, strong_error, False, False) is AbsoluteState  # float64: the published numerics
    assert choose(p32, x32, SLEEP, strong_error, False, False) is FusedState  # noisy, no signals
    assert choose(p32, x32, SLEEP, strong_error, True, False) is FusedSignalState  # noisy, per-step signals
    assert choose(p32, x32, STRONG, strong_error, True, False) is DeviationState  # noise-free, per-step signals
    assert choose(p32, x32, STRONG, strong_error, False, False) is FusedState  # a strong target
    assert choose(p32, x32, STRONG, strong_error, False, True) is DeviationState  # the early stop reads the state
    assert choose(p32, x32, STRONG, weak_error, False, False) is DeviationState  # a nudge near rounding
    wide, wx, wy = network(sizes=(12, 16, 70))
    assert choose(as_float32(wide), wx.float(), SLEEP, strong_error, False, False) is DeviationState


def test_absolute_float32_would_lose_a_tiny_nudge(monkeypatch):
    """Why the precision rule: towards a target 1e-6 away, FusedState's absolute voltages lose
    the deviations that DeviationState keeps."""
    params, x, y = network()
    cfg = dataclasses.replace(STRONG, early_stop=False)
    ff = feedforward(params, x)
    delta = output_delta(ff.r[-1], y, "cross_entropy", 1e-6)

    def final(p, xx, d, state_class=None):
        if state_class is not None:
            monkeypatch.setattr(dynamics, "_state_class", lambda *args: state_class)
        result = simulate(p, xx, feedforward(p, xx), None, cfg, delta=d, final_state=True)
        monkeypatch.undo()
        return result.dv

    truth = final(params, x, delta, None)
    p32, x32, d32 = as_float32(params), x.float(), delta.float()
    assert max(relative(a, b) for a, b in zip(final(p32, x32, d32, DeviationState), truth)) < 1e-4
    assert max(relative(a, b) for a, b in zip(final(p32, x32, d32, FusedState), truth)) > 1e-2


def test_noise_source_draws_the_standard_increments():
    scale = torch.linspace(0.5, 2.0, 7)
    for kind, dtype in [("two_point", torch.float32), ("gaussian", torch.float32), ("two_point", torch.float64)]:
        source = NoiseSource((5, 7), kind, dtype, "cpu", torch.Generator().manual_seed(4))
        reference = torch.Generator().manual_seed(4)
        out = torch.empty(5, 7, dtype=dtype)
        for _ in range(3):  # step after step, from the same generator state
            expected = standard_noise((5, 7), kind, dtype, "cpu", reference) * scale.to(dtype)
            assert torch.equal(source.scaled(scale.to(dtype), out), expected)
        if kind == "two_point":
            assert torch.equal(out.abs(), scale.to(dtype).expand(5, 7))
        if source.buffer is not None:  # into its own buffer (the shape's 35 bits of a padded word): the same draws
            assert torch.equal(source.buffer, torch.zeros(5, 7))
            for _ in range(3):
                expected = standard_noise((5, 7), kind, dtype, "cpu", reference) * scale.to(dtype)
                assert torch.equal(source.scaled(scale.to(dtype), source.buffer), expected)
    with pytest.raises(ValueError, match="unknown noise"):
        NoiseSource((2,), "uniform", torch.float32, "cpu")


def test_two_point_noise_source_is_balanced():
    source = NoiseSource((256, 400), "two_point", torch.float32, "cpu", torch.Generator().manual_seed(0))
    draw = source.scaled(torch.ones(()), torch.empty(256, 400))
    assert set(draw.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(draw.mean())) < 4 / draw.numel() ** 0.5  # 4 standard errors
    assert abs(float((draw[:, 1:] * draw[:, :-1]).mean())) < 4 / draw.numel() ** 0.5  # neighbours independent


def test_last_point_can_settle_separates_the_published_runs():
    assert not last_point_can_settle(SimulationConfig(dt=0.001, steps=500, k_p=2.0, alpha=0.008), 1e-4)  # Strong-DFC
    assert last_point_can_settle(SimulationConfig(dt=0.02, steps=1000, k_p=2.0, alpha=0.0014), 1e-4)  # DFC-SS
    assert last_point_can_settle(SimulationConfig(dt=0.001, steps=300, k_p=0.0, alpha=0.0014), 1e-4)  # no k_p


def test_a_run_that_cannot_settle_would_not_have_stopped(monkeypatch):
    """Where the rule skips the checks, checking anyway (the rule forced true) never stops either,
    and both end where the full simulation does."""
    params, x, y = network()
    cfg = dataclasses.replace(STRONG, steps=500, dtype="float64")
    assert not last_point_can_settle(cfg, cfg.tolerance)
    skipped = run(params, x, y, cfg)
    solves = []
    original = tail.SettledTail.check

    def counted(self, *args):
        solves.append(1)
        return original(self, *args)

    monkeypatch.setattr(tail.SettledTail, "check", counted)
    monkeypatch.setattr(tail, "last_point_can_settle", lambda *args: True)
    monkeypatch.setattr(dynamics, "last_point_can_settle", lambda *args: True)
    ff = feedforward(params, x)
    target, _ = strong_target(ff.r[-1], y, "cross_entropy", 0.9)
    checked = simulate(params, x, ff, target, cfg, output_error="softmax", final_state=True)
    assert solves and checked.steps_simulated == cfg.steps - 1  # checked, and simulated in full
    full = run(params, x, y, dataclasses.replace(cfg, early_stop=False))
    for a, b, c in zip(skipped, [checked.u, *checked.dv], full):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)
