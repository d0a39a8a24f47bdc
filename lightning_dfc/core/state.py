"""The controlled network's state during a simulation, in two representations.

* :class:`AbsoluteState` (float64): absolute voltages v_i and rates r_i, as the authors simulate.
* :class:`DeviationState` (float32 and lower): deviations dv_i = v_i - v^-_i, dr_i = r_i - r^-_i
  from the feedforward pass, with cancellation-free teaching signals.

Both advance every layer by one somatic Euler step given the apical input and return the step's
teaching signals; deviations are formed on request.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .activations import DirectDeviation
from .config import RULES, SimulationConfig
from .network import LayerParams

__all__ = ["affine", "Apical", "AbsoluteState", "DeviationState", "teaching_signal"]


class Apical(NamedTuple):
    """The apical voltage of every layer as v^A = Qbar c + eta: a control part ``control`` c
    (B, n_L) and a noise part ``noise`` eta (B, S) or ``None`` (the split form of the fast
    numerics' drive: the feedback rule's sum over v^A then splits into an (n_L, n_L) part and a
    noise part, ``FeedbackSum``)."""

    control: Tensor
    noise: Tensor | None


def affine(params: LayerParams, i: int, pre: Tensor) -> Tensor:
    """W_i pre + b_i for 0-based layer index i; ``pre`` is (B, n_{i-1})."""
    bias = params.biases[i]
    if bias is None:
        return pre @ params.weights[i].T
    return torch.addmm(bias, pre, params.weights[i].T)


def _layer_step(
    act,
    rule: str,
    dv: Tensor,
    soma_input: Tensor,
    dvb: Tensor | None,
    soma_rate: float,
    v_ff: Tensor,
    r_ff: Tensor,
    slope_ff: Tensor | None,
    want_signal: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer's somatic Euler step and teaching signal, in deviations; all (B, n_i).

    dv <- dv + dt/tau_v (soma_input - dv) (in place), soma_input = v^A + dvb; dr = phi(v_ff +
    dv) - r_ff. ``dvb`` is the basal deviation W_i dr_{i-1} (``None`` for the first layer, whose
    basal input is constant; needed only for the signal). The signal phi(v) - phi(v^B) is
    dr - dr^B with both rate deviations cancellation-free: each keeps its relative precision
    however small, and their difference loses only the factor |dr| / |signal|, which the somatic
    and basal deviations of a controlled layer keep of order 1.
    """
    dv = dv.lerp_(soma_input, soma_rate)
    dr = act.rate_deviation(v_ff, r_ff, dv, slope_ff)
    signal = None
    if want_signal:
        if rule == "voltage_difference":
            signal = dv.clone() if dvb is None else dv - dvb
        else:
            signal = dr if dvb is None else dr - act.rate_deviation(v_ff, r_ff, dvb, slope_ff)
    return dv, dr, signal


class DeviationState:
    """The network's state as deviations from the feedforward pass, dv_i = v_i - v^-_i and
    dr_i = r_i - r^-_i (float32: the teaching signals from cancellation-free identities)."""

    fresh_deviations = False  # voltage_deviations() returns the live state: copy to keep it

    def __init__(self, params: LayerParams, ff, cfg: SimulationConfig, rule: str) -> None:
        self.params, self.ff, self.cfg, self.rule = params, ff, cfg, rule
        self.soma_rate = cfg.dt / cfg.tau_v
        self.dv = [torch.zeros_like(t) for t in ff.v]
        self.dr = [torch.zeros_like(t) for t in ff.r]
        self.slopes = [act.derivative(v) if act.name == "tanh" else None for act, v in zip(params.activations, ff.v)]
        self.layer_step = _compiled_layer_step() if cfg.compile else _layer_step
        # noisy dynamics: deviations set by the noise, far above float32's rounding (DirectDeviation)
        self.activations = [DirectDeviation(a) if cfg.noisy else a for a in params.activations]

    def step(self, apical: tuple[Tensor, ...], want_signal: bool) -> list[Tensor | None]:
        """One somatic Euler step of every layer given its apical voltage (B, n_i); the teaching
        signals of this step (``None`` entries unless ``want_signal``). Without signals a layer's
        basal input joins its apical voltage inside the GEMM."""
        weights, dr, n_layers = self.params.weights, self.dr, self.params.num_layers
        previous = None if self.cfg.inst_transmission else list(dr)  # the previous step's presynaptic rates
        signals = []
        for i in range(n_layers):
            soma, dvb = apical[i], None
            if i > 0:
                pre = dr[i - 1] if previous is None else previous[i - 1]
                if want_signal:
                    dvb = pre @ weights[i].T
                    soma = soma + dvb
                else:
                    soma = torch.addmm(soma, pre, weights[i].T)
            self.dv[i], dr[i], sig = self.layer_step(
                self.activations[i], self.rule, self.dv[i], soma, dvb, self.soma_rate,
                self.ff.v[i], self.ff.r[i], self.slopes[i], want_signal,
            )
            signals.append(sig)
        return signals

    def set_final(self, dv: list[Tensor], dr: list[Tensor]) -> None:
        """Replace the state by these deviations (an extrapolated last time point)."""
        self.dv, self.dr = list(dv), list(dr)

    def output_deviation(self) -> Tensor:
        return self.dr[-1]

    def output_rate(self) -> Tensor:
        return self.ff.r[-1] + self.dr[-1]

    def voltage_deviations(self) -> list[Tensor]:
        return self.dv

    def rate_deviations(self) -> list[Tensor]:
        return self.dr


class AbsoluteState(DeviationState):
    """float64: absolute voltages v_i and rates r_i, as the authors simulate them (the plain
    differences phi(v) - phi(v^B) are accurate to ~1e-16 there). Fewer element-wise passes per
    step than the deviation form: v^B_i = W_i r_{i-1} + b_i is one ``addmm``, and deviations are
    formed only when asked for (convergence checks, the outer-product correction, the result)."""

    fresh_deviations = True

    def __init__(self, params: LayerParams, ff, cfg: SimulationConfig, rule: str) -> None:
        self.params, self.ff, self.cfg, self.rule = params, ff, cfg, rule
        self.soma_rate = cfg.dt / cfg.tau_v
        self.v, self.r = list(ff.v), list(ff.r)  # replaced, never written in place
        self.feedback_t: list[Tensor | None] = [q.T for q in params.feedback]  # (n_L, n_i) views; None: I

    def step(self, apical: tuple[Tensor, ...] | Tensor, want_signal: bool) -> list[Tensor | None]:
        """As :meth:`DeviationState.step`; ``apical`` may also be the control u (B, n_L), whose
        feedback Q_i u is then added to each layer's basal voltage in one ``addmm``."""
        params, r, n_layers = self.params, self.r, self.params.num_layers
        basal = [self.ff.v[0]] + [None] * (n_layers - 1)  # layer 1's basal voltage W_1 x + b_1 is constant
        if not self.cfg.inst_transmission:
            basal[1:] = [affine(params, i, r[i - 1]) for i in range(1, n_layers)]
        signals = []
        for i, act in enumerate(params.activations):
            if basal[i] is None:
                basal[i] = affine(params, i, r[i - 1])
            if isinstance(apical, Tensor):
                q_t = self.feedback_t[i]
                soma = basal[i] + apical if q_t is None else torch.addmm(basal[i], apical, q_t)
            else:
                soma = basal[i] + apical[i]
            v = torch.lerp(self.v[i], soma, self.soma_rate)
            r[i] = act(v)
            self.v[i] = v
            sig = None
            if want_signal:
                if self.rule == "voltage_difference":
                    sig = v - basal[i]
                elif i == 0:  # phi(v^B_1) is the feedforward rate
                    sig = r[0] - self.ff.r[0]
                else:
                    sig = r[i] - act(basal[i])
            signals.append(sig)
        return signals

    def set_final(self, dv: list[Tensor], dr: list[Tensor]) -> None:
        self.v = [a + d for a, d in zip(self.ff.v, dv)]
        self.r = [a + d for a, d in zip(self.ff.r, dr)]

    def output_deviation(self) -> Tensor:
        return self.r[-1] - self.ff.r[-1]

    def output_rate(self) -> Tensor:
        return self.r[-1]

    def voltage_deviations(self) -> list[Tensor]:
        return [v - v_ff for v, v_ff in zip(self.v, self.ff.v)]

    def rate_deviations(self) -> list[Tensor]:
        return [r - r_ff for r, r_ff in zip(self.r, self.ff.r)]


_COMPILED: dict[str, object] = {}


def _compiled_layer_step():
    """``torch.compile`` of :func:`_layer_step` (built once per process; see ``SimulationConfig.compile``)."""
    if "layer_step" not in _COMPILED:
        _COMPILED["layer_step"] = torch.compile(_layer_step, dynamic=False)
    return _COMPILED["layer_step"]


def _signal(
    rule: str,
    act,
    v_ff: Tensor,
    r_ff: Tensor,
    dv: Tensor,
    dr: Tensor,
    dvb: Tensor | None,
    slope_ff: Tensor | None,
) -> Tensor:
    """Teaching signal of one layer from deviations without cancellation, (B, n_i).

    v - v^B = dv - dvb; phi(v) - phi(v^B) = dr for the first layer (dvb ``None``).
    """
    if rule == "voltage_difference":
        return dv if dvb is None else dv - dvb
    if dvb is None:
        return dr
    return act.deviation_difference(v_ff, r_ff, dv, dr, dvb, slope_ff)


def teaching_signal(
    rule: str, act, v_ff: Tensor, dv: Tensor, dvb: Tensor | None, r_ff: Tensor | None = None
) -> Tensor:
    """The local teaching signal of one layer at a state given as deviations, (B, n_i).

    ``nonlinear_difference``: phi(v) - phi(v^B); ``voltage_difference``: v - v^B, with
    v = v_ff + dv and v^B = v_ff + dvb (``dvb`` = W_i (r_{i-1} - r^-_{i-1}); ``None`` for the first
    layer). Computed without cancellation in every dtype.
    """
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}; choose one of {RULES}")
    r_ff = act(v_ff) if r_ff is None else r_ff
    dr = act.rate_deviation(v_ff, r_ff, dv)
    return _signal(rule, act, v_ff, r_ff, dv, dr, dvb, None)
