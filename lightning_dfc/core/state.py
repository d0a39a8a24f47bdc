"""The controlled network's state during a simulation, in two representations.

* :class:`AbsoluteState` (float64): absolute voltages v_i and rates r_i, as the authors simulate.
* :class:`DeviationState` (float32 and lower): deviations dv_i = v_i - v^-_i, dr_i = r_i - r^-_i
  from the feedforward pass, with cancellation-free teaching signals.
* :class:`FusedState` (float32, deviations far above its rounding, no per-step teaching signals):
  absolute voltages, each layer's Euler step one in-place GEMM.
* :class:`FusedSignalState` (float32, noisy dynamics with per-step teaching signals): the same
  coordinates, each layer's basal voltage one GEMM.

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

__all__ = ["affine", "Apical", "AbsoluteState", "DeviationState", "FusedState", "FusedSignalState", "teaching_signal"]


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
    fuses_control = False  # the apical drive passes each layer's v^A (True: c and eta, Q c inside the state's GEMMs)
    signal_scales: list[float] | None = None  # the true signal per returned one (None: 1 for every layer)

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


class FusedState:
    """float32 absolute voltages, where the deviations lie far above float32's rounding (noisy
    dynamics, strong targets) and no step needs its teaching signals (the sleep passes, a rule
    at the last point): the fewest passes over memory per step.

    Layer i's presynaptic rates, a column of ones and the apical control c share one buffer
    X_i = [r_{i-1} | 1 | c] (B, n_{i-1} + 1 + n_L), its weights M_i = [W_i | b_i | Q_i]^T
    (contiguous), so the somatic step v_i <- (1 - b) v_i + b (X_i M_i + eta_i) is one in-place
    ``addmm_`` (and one add of the noise eta_i), and phi(v_i) is written straight into X_{i+1}.
    Layer 1's basal input W_1 x + b_1 is constant: v_1 <- (1 - b) v_1 + b (c Q_1^T + v^B_1 + eta_1).
    ``step`` takes the apical drive split (:class:`Apical`: c and the noise eta (B, S) or
    ``None``); deviations are formed on request.

    Hidden tanh layers run in sigmoid coordinates, because float32 ``torch.tanh`` costs about
    three sigmoids: the state holds u_i = 2 v_i and X_{i+1} holds s_i = sigmoid(u_i), so that
    tanh(v_i) = 2 s_i - 1 is folded into the next layer's weights (rows 2 W_{i+1}^T, bias row
    b_{i+1} - W_{i+1} 1). Its rounding, about 1e-7 absolute in r_i, is that of the absolute
    float32 state itself."""

    fresh_deviations = True
    fuses_control = True
    signal_scales: list[float] | None = None

    def __init__(self, params: LayerParams, ff, cfg: SimulationConfig, rule: str) -> None:
        self.params, self.ff, self.cfg, self.rule = params, ff, cfg, rule
        self.soma_rate = b = cfg.dt / cfg.tau_v
        self.sizes = [w.shape[0] for w in params.weights]
        batch, n_out, n_layers = ff.v[0].shape[0], self.sizes[-1], params.num_layers
        # the hidden tanh layers held in sigmoid coordinates: u_i = 2 v_i, s_i = sigmoid(u_i)
        self.scaled = [i < n_layers - 1 and act.name == "tanh" for i, act in enumerate(params.activations)]
        self.v = [t * 2.0 if scaled else t.clone() for t, scaled in zip(ff.v, self.scaled)]
        self.maps: list[Tensor] = [params.feedback[0].T.contiguous()]  # (K_i, n_i)
        self.inputs: list[Tensor | None] = [None]
        self.controls: list[Tensor] = []  # the c columns of every X_i
        self.basal_width: list[int] = [0]  # the columns [r_{i-1} | 1] of X_i
        for i in range(1, n_layers):
            weights, bias = params.weights[i], params.biases[i]
            if self.scaled[i - 1]:  # W r + b = (2 W) s + (b - W 1)
                bias = -weights.sum(1) if bias is None else bias - weights.sum(1)
                weights = weights * 2.0
            parts = [weights] + ([] if bias is None else [bias.unsqueeze(1)]) + [params.feedback[i]]
            self.maps.append(torch.cat(parts, 1).T.contiguous())
            n_pre = self.sizes[i - 1]
            self.basal_width.append(n_pre + (bias is not None))
            inputs = ff.r[i - 1].new_ones(batch, self.maps[i].shape[0])
            if self.scaled[i - 1]:
                torch.sigmoid(self.v[i - 1], out=inputs[:, :n_pre])
            else:
                inputs[:, :n_pre] = ff.r[i - 1]
            self.inputs.append(inputs)
            self.controls.append(inputs[:, self.basal_width[i]:])
        self.step_gain = [2.0 * b if scaled else b for scaled in self.scaled]
        self.basal_first = ff.v[0] * self.step_gain[0]  # b (W_1 x + b_1), in layer 1's coordinates
        last = params.activations[-1]
        self.rates = [self.inputs[i + 1][:, :self.sizes[i]] for i in range(n_layers - 1)]
        self.rates.append(self.v[-1] if last.name == "linear" else ff.r[-1].clone())
        self.order = list(range(n_layers)) if cfg.inst_transmission else list(range(n_layers))[::-1]
        self._noise, self._noise_views = None, None

    def step(self, apical: Apical, want_signal: bool) -> list[None]:
        """One somatic Euler step of every layer (without instantaneous transmission in reverse
        order, so that each layer reads its presynaptic rates before they are updated)."""
        if want_signal:
            raise ValueError("FusedState forms no per-step teaching signals; use DeviationState")
        control, noise = apical
        for view in self.controls:
            view.copy_(control)
        if noise is not None and noise is not self._noise:
            self._noise, self._noise_views = noise, torch.split(noise, self.sizes, dim=1)
        beta = 1 - self.soma_rate
        for i in self.order:
            v, gain = self.v[i], self.step_gain[i]
            if i == 0:
                v.addmm_(control, self.maps[0], beta=beta, alpha=gain).add_(self.basal_first)
            else:
                v.addmm_(self.inputs[i], self.maps[i], beta=beta, alpha=gain)
            if noise is not None:
                v.add_(self._noise_views[i], alpha=gain)
            if self.scaled[i]:
                torch.sigmoid(v, out=self.rates[i])
            else:
                _write_rate(self.params.activations[i], v, self.rates[i])
        return [None] * len(self.v)

    def set_final(self, dv: list[Tensor], dr: list[Tensor]) -> None:
        for i in range(len(self.v)):
            torch.add(self.ff.v[i], dv[i], out=self.v[i])
            if self.scaled[i]:
                self.v[i].mul_(2.0)
                torch.add(self.ff.r[i], dr[i], out=self.rates[i]).add_(1.0).mul_(0.5)
            elif self.rates[i] is not self.v[i]:
                torch.add(self.ff.r[i], dr[i], out=self.rates[i])

    def output_deviation(self) -> Tensor:
        return self.rates[-1] - self.ff.r[-1]

    def output_rate(self) -> Tensor:
        return self.rates[-1]

    def voltage_deviations(self) -> list[Tensor]:
        return [torch.sub(v * 0.5, v_ff) if scaled else v - v_ff
                for v, v_ff, scaled in zip(self.v, self.ff.v, self.scaled)]

    def rate_deviations(self) -> list[Tensor]:
        return [torch.sub(r * 2.0 - 1.0, r_ff) if scaled else r - r_ff
                for r, r_ff, scaled in zip(self.rates, self.ff.r, self.scaled)]


class FusedSignalState(FusedState):
    """:class:`FusedState`'s absolute float32 coordinates, with every step's teaching signals:
    the noisy dynamics of the time-average rule (Strong-DFC's single phase, DFC with noise),
    whose deviations the noise sets far above float32's rounding.

    Layer i's basal voltage is one GEMM over the first columns of X_i, [r_{i-1} | 1], into
    a reused buffer, in the layer's coordinates (u^B_i = 2 v^B_i for a hidden tanh layer); the
    apical voltage v^A_i comes from the drive (Qbar c + eta, one ``addmm`` for all layers). Per
    hidden tanh layer and step that is a GEMM and five passes: the somatic input u^B + 2 v^A,
    the Euler step, s = sigmoid(u) into X_{i+1}, s^B = sigmoid(u^B) and the signal
    s - s^B, half of tanh(v) - tanh(v^B) (``signal_scales``: 2), against eleven passes of the
    deviation form. Rounding: about 1e-7 absolute in each signal, that of the rates."""

    fuses_control = False

    def __init__(self, params: LayerParams, ff, cfg: SimulationConfig, rule: str) -> None:
        super().__init__(params, ff, cfg, rule)
        self.gain = [2.0 if scaled else 1.0 for scaled in self.scaled]
        self.basal_maps = [None] + [(self.maps[i][:self.basal_width[i]] * self.gain[i]).contiguous()
                                    for i in range(1, params.num_layers)]
        first, act = ff.v[0] * self.gain[0], params.activations[0]
        self.basal = [first] + [torch.empty_like(v) for v in ff.v[1:]]
        self.first_basal_rate = torch.sigmoid(first) if self.scaled[0] else act(first)
        self.soma = [torch.empty_like(v) for v in ff.v]
        self.signals = [torch.empty_like(v) for v in ff.v]
        if rule == "voltage_difference":
            self.signal_scales = [1.0 / g for g in self.gain]
        else:  # tanh(v) - tanh(v^B) = 2 (s - s^B)
            self.signal_scales = [2.0 if scaled else 1.0 for scaled in self.scaled]
        # per layer, in step order, what the step reads and writes (no per-step slicing or lookups)
        self.plan = [(i, self.v[i], self.basal[i], None if i == 0 else self.inputs[i][:, :self.basal_width[i]],
                      self.basal_maps[i], self.soma[i], self.gain[i], self.rates[i], self.scaled[i],
                      params.activations[i], self._signal_kind(i), self.signals[i]) for i in self.order]

    def _signal_kind(self, i: int) -> str:
        act = self.params.activations[i]
        if self.rule == "voltage_difference" or act.name == "linear":
            return "voltage"  # v - v^B
        if i == 0:
            return "first"  # the basal voltage W_1 x + b_1 is constant: phi(v^B_1) once
        return "sigmoid" if self.scaled[i] else "rate"

    def step(self, apical: tuple[Tensor, ...], want_signal: bool) -> list[Tensor | None]:
        """One somatic Euler step of every layer given its apical voltage v^A_i (B, n_i); the
        step's signals (valid until the next step; times ``signal_scales``) if ``want_signal``."""
        signals: list[Tensor | None] = [None] * len(self.v)
        soma_rate = self.soma_rate
        for i, v, basal, pre, basal_map, soma, gain, rate, scaled, act, kind, out in self.plan:
            if pre is not None:
                torch.mm(pre, basal_map, out=basal)
            v.lerp_(torch.add(basal, apical[i], alpha=gain, out=soma), soma_rate)
            if scaled:
                torch.sigmoid(v, out=rate)
            else:
                _write_rate(act, v, rate)
            if not want_signal:
                continue
            if kind == "voltage":
                signals[i] = torch.sub(v, basal, out=out)
            elif kind == "first":
                signals[i] = torch.sub(rate, self.first_basal_rate, out=out)
            else:
                signals[i] = torch.sub(rate, basal.sigmoid_() if kind == "sigmoid" else act(basal), out=out)
        return signals


def _write_rate(act, v: Tensor, out: Tensor) -> None:
    """phi(v) into ``out`` (a view of the next layer's input buffer) without a temporary."""
    if out is v:  # linear: the rate is the voltage
        return
    if act.name == "tanh":
        torch.tanh(v, out=out)
    elif act.name == "sigmoid":
        torch.sigmoid(v, out=out)
    else:
        out.copy_(act(v))


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
