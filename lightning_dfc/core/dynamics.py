"""Network and controller dynamics of DFC (paper eqs. 1 and 4), as pure tensor functions.

Notation (shapes): B batch, n_i width of layer i (i = 1..L), n_0 input width, S = n_1 + ... + n_L.
v_i somatic voltage, v^B_i = W_i r_{i-1} + b_i basal (feedforward) voltage, v^A_i apical
(feedback) voltage, r_i = phi_i(v_i), u the control signal (B, n_L), Qbar = [Q_1; ...; Q_L] (S, n_L).

One Euler(-Maruyama) step t -> t+1, as in the reference implementation:

    e_t      = r_L* - r_L[t]
    u_int    += dt (e_t - alpha u[t]);          u[t+1] = u_int + k_p e_t   (leak on the total u)
    v^A[t+1] = v^A[t] + dt/tau_A (Q u[k] - v^A[t]) + sigma sqrt(dt)/tau_A xi,   k = t+1 if proactive
    v^B_i    = W_i r_{i-1}[t+1] + b_i        (inst_transmission; r_{i-1}[t] otherwise)
    v_i      += dt/tau_v (v^A_i + v^B_i - v_i);  r_i = phi_i(v_i)

Trajectories are never stored: what the learning rules need is accumulated as running sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor

from .accumulators import ControlTail, FeedbackSum, ForwardSums, Trajectory, all_finite, residual, sample_norm
from .config import RULES, SimulationConfig
from .network import LayerParams
from .noise import NoiseSource, standard_noise
from .numerics import DEFAULT_NUMERICS
from .state import AbsoluteState, Apical, DeviationState, FusedSignalState, FusedState, affine, teaching_signal
from .tail import Deviation, OutputError, SettledTail, Tail, last_point_can_settle

__all__ = [
    "Feedforward",
    "SimulationResult",
    "SteadyState",
    "feedforward",
    "simulate",
    "resolve_levers",
    "output_jacobian",
    "linearized_steady_state",
    "teaching_signal",
    "RULES",
]


class Feedforward(NamedTuple):
    """The feedforward pass: ``v[i]`` pre-activations and ``r[i]`` rates, each ``(B, n_{i+1})``."""

    v: tuple[Tensor, ...]
    r: tuple[Tensor, ...]


def feedforward(params: LayerParams, x: Tensor, apical: Sequence[Tensor] | None = None) -> Feedforward:
    """Feedforward pass of the network (eq. 2). ``x``: (B, n_0).

    With ``apical`` (one (B, n_i) per layer, e.g. the blocks of Q u) each layer's voltage is
    W_i r_{i-1} + b_i + apical_i: the controlled sweep of a steady state."""
    vs, rs = [], []
    pre = x
    for i, act in enumerate(params.activations):
        v = affine(params, i, pre)
        if apical is not None:
            v = v + apical[i]
        pre = act(v)
        vs.append(v)
        rs.append(pre)
    return Feedforward(tuple(vs), tuple(rs))


@dataclass
class SimulationResult:
    """Outcome of one simulation of T time points (t = 0 is the feedforward state).

    Attributes:
        v, r: final somatic voltages and rates, lists of (B, n_i).
        u: final control signal (B, n_L).
        steps_simulated: Euler steps actually run (<= T - 1; fewer after an early stop, whose
            remaining steps were added in closed form: ``tail``).
        finite: False if any state became non-finite (the dynamics diverged).
        error_initial, error_final: ||r_L* - r_L|| at t = 0 and at the end, (B,).
        residual: ||e - alpha u|| / ||r_L^-|| at the end, (B,) (0 at the fixed point; for the
            linear output error this is ||r_L - (r_L* - alpha u)|| / ||r_L^-||).
        u_mean: the steady-state control: ``u`` for noise-free runs, the mean of u over the last
            quarter of the steps for noisy ones (as the reference does), (B, n_L).
        dv, dr: final deviations from the feedforward pass, v_i - v^-_i and r_i - r^-_i, computed
            without cancellation (use these, not ``v - ff.v``, in low precision).
        signal_sum: with ``accumulate_forward``: sum over t = 0..T-1 of the teaching signal
            phi(v_i[t]) - phi(v^B_i[t]), per sample, list of (B, n_i).
        outer_sum: with ``accumulate_forward``: sum over t and the batch of
            s_i[t]^T r_{i-1}[t], list of (n_i, n_{i-1}); ``None`` for layer 1 (its presynaptic
            input x is constant: use ``signal_sum[0].T @ x``).
        feedback_sum: with ``accumulate_feedback``: sum over t = 0..T-2 and the batch of
            v^A[t]^T u[t+1], (S, n_L).
        trajectory: with ``record``: dict of stacked ``u`` and ``r_L`` over the simulated time
            points, (steps_simulated + 1, B, n_L) each.
        tail: after an early stop, the extrapolated rest (:class:`~lightning_dfc.core.tail.Tail`).
    """

    v: list[Tensor]
    r: list[Tensor]
    u: Tensor
    steps_simulated: int
    finite: bool
    error_initial: Tensor
    error_final: Tensor
    residual: Tensor
    dv: list[Tensor] = field(default_factory=list)
    dr: list[Tensor] = field(default_factory=list)
    u_mean: Tensor | None = None
    signal_sum: list[Tensor] | None = None
    outer_sum: list[Tensor | None] | None = None
    feedback_sum: Tensor | None = None
    trajectory: dict[str, Tensor] = field(default_factory=dict)
    tail: Tail | None = None


def noise_scales(cfg: SimulationConfig, num_layers: int) -> list[float]:
    """Each layer's std of the apical noise increment: white noise enters as
    sigma_i sqrt(dt) / tau_A xi, filtered noise as sigma_i n (n carries its own scale)."""
    tau_a = cfg.tau_apical if cfg.tau_apical is not None else cfg.dt
    factor = 1.0 if cfg.tau_noise is not None else cfg.dt**0.5 / tau_a
    return [(cfg.output_sigma if i == num_layers - 1 else cfg.sigma) * factor for i in range(num_layers)]


def _noise_std(params: LayerParams, cfg: SimulationConfig, like: Tensor) -> Tensor:
    """Per-column std of the apical noise increment, (S,)."""
    sizes = [w.shape[0] for w in params.weights]
    scales = noise_scales(cfg, len(sizes))
    return torch.cat([torch.full((n,), s, dtype=like.dtype, device=like.device) for n, s in zip(sizes, scales)])


OUTPUT_ERRORS = OutputError.KINDS


def resolve_levers(cfg: SimulationConfig) -> SimulationConfig:
    """``cfg`` with its unset numerics levers from the default preset (``fast``)."""
    return DEFAULT_NUMERICS.resolve(cfg)


def simulate(
    params: LayerParams, x: Tensor, ff: Feedforward, target: Tensor | None, cfg: SimulationConfig, *,
    delta: Tensor | None = None, output_error: str = "linear", accumulate_forward: bool = False,
    accumulate_feedback: bool = False, highpass_rate: float | None = None, generator: torch.Generator | None = None,
    record: bool = False, rule: str = "nonlinear_difference", sample_mask: Tensor | None = None,
    final_state: bool = False, classify: tuple[float, float] | None = None,
) -> SimulationResult:
    """Simulate the controlled network from its feedforward state ``ff`` towards ``target``.

    The state is :class:`~lightning_dfc.core.state.AbsoluteState` in float64 and
    :class:`~lightning_dfc.core.state.DeviationState` (cancellation-free) below; what the rules
    need is accumulated step by step (:mod:`~lightning_dfc.core.accumulators`), never stored.

    Args:
        params, x, ff: network tensors, input (B, n_0) and its feedforward pass.
        target, delta: output target r_L* (B, n_L) and/or r_L* - r^-_L (pass ``delta`` formed
            directly, e.g. -lambda dL/dr_L: ``target - r^-_L`` cancels in low precision).
        cfg: simulation hyperparameters.
        output_error: ``linear``: e = r_L* - r_L (DFC); ``softmax``: e = r_L* - softmax(r_L).
        accumulate_forward: the DFC rule's sums, of the teaching signal ``rule``
            (``nonlinear_difference`` phi(v) - phi(v^B), eq. 5; or ``voltage_difference`` v - v^B).
        accumulate_feedback: sum_t v^A[t]^T u[t+1] (the sleep rule); with ``highpass_rate``
            (dt / tau_f) u minus its moving average (Strong-DFC single phase).
        generator: the noise's generator (``cfg.sigma > 0``; ``None``: torch's global one).
        record: also return the trajectories of u and r_L (memory O(T)).
        sample_mask: boolean (B,): accumulate and judge finiteness on these samples only.
        final_state: the caller uses the last time point's state (a steady-state rule): an
            early stop bounds what it extrapolates there (:mod:`~lightning_dfc.core.tail`).
        classify: ``(threshold, epsilon)`` of the caller's convergence test of the last point:
            an early stop waits until each sample's predicted outcome is clear.

    Returns:
        :class:`SimulationResult`. Unset numerics levers of ``cfg`` come from the default preset
        (:mod:`~lightning_dfc.core.numerics`). With ``cfg.early_stop`` (noise-free, no feedback
        sum, no record) a settled run stops and adds the rest in closed form (``result.tail``).
    """
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}; choose one of {RULES}")
    cfg = resolve_levers(cfg)
    if getattr(torch, cfg.dtype) != x.dtype:
        return _simulate_in(getattr(torch, cfg.dtype), params, x, ff, target, cfg, delta=delta,
                            output_error=output_error, accumulate_forward=accumulate_forward,
                            accumulate_feedback=accumulate_feedback, highpass_rate=highpass_rate,
                            generator=generator, record=record, rule=rule, sample_mask=sample_mask,
                            final_state=final_state, classify=classify)
    steps, dt, alpha, k_p = cfg.steps - 1, cfg.dt, cfg.alpha, cfg.k_p
    keep = None if sample_mask is None else sample_mask.unsqueeze(1)
    error_of = OutputError(output_error, target, delta, ff.r[-1])
    checks = _checks(cfg, accumulate_forward and not final_state, accumulate_feedback or record)
    state = _state_class(params, x, cfg, error_of, accumulate_forward, checks)(params, ff, cfg, rule)
    drive = _ApicalDrive(params, cfg, x, state, accumulate_feedback, generator)
    u, u_int = torch.zeros_like(ff.r[-1]), torch.zeros_like(ff.r[-1])
    error = error_of.of_state(state)
    error_initial = sample_norm(error)
    classification = None if classify is None else (*classify, error_initial)
    acc = _Accumulators(cfg, params, ff, x, u, error_of, keep, accumulate_forward, accumulate_feedback, highpass_rate,
                        record, drive, rule, final_state, classification)
    finite, steps_done, tail = True, steps, None
    for t in range(steps):
        if t > 0:
            error = error_of.of_state(state)
        if k_p > 0:  # leaky PI controller, the leak on the total u (eq. 4)
            u_int.add_(error, alpha=dt).add_(u, alpha=-alpha * dt)
            u_new = torch.add(u_int, error, alpha=k_p)
        else:
            u_new = u + dt * (error - alpha * u)
        acc.control(t, drive.current(), u_new)  # v^A[t] pairs with u[t+1] in the feedback rule
        apical = drive.step(u_new if cfg.proactive else u)
        u = u_new
        acc.signals(state.step(apical, acc.sums is not None), state, u)
        verdict = acc.check(t, u_int if k_p > 0 else None, u, drive.filtered(), state)
        if verdict is not None:
            steps_done, finite, tail = t + 1, isinstance(verdict, Tail), verdict if isinstance(verdict, Tail) else None
            u = acc.finish(tail, state, u) if finite else u
            break
    result = acc.result(state, ff, u, error_of, alpha, finite, steps_done, error_initial)
    result.tail = tail
    return result


def _checks(cfg: SimulationConfig, time_average: bool, excluded: bool) -> bool:
    """Whether the early stop will check the state (:class:`SettledTail`): noise-free, neither a
    feedback sum nor a record (``excluded``), and a rule that averages the trajectory
    (``time_average``) or a last point the controller can reach (:func:`last_point_can_settle`)."""
    return bool(cfg.early_stop) and not cfg.noisy and not excluded and (
        time_average or last_point_can_settle(cfg, cfg.tolerance))


# FusedState's precision rule: a noise-free simulation's mean target offset at least this
# fraction of its output's size, i.e. thousands of times float32's rounding of the state
FUSED_OFFSET = 1e-3


def _state_class(params: LayerParams, x: Tensor, cfg: SimulationConfig, error_of: OutputError, signals: bool,
                 checks: bool) -> type:
    """The state representation: :class:`AbsoluteState` in float64 (the published numerics);
    below, absolute float32 voltages where no early-stop check reads the state and its
    deviations lie far above float32's rounding, with a narrow output (a wide one keeps the
    drive's identity block): :class:`FusedSignalState` for noisy dynamics with per-step teaching
    signals (the noise sets the deviations), :class:`FusedState` without signals (noisy, or
    noise-free with a mean target offset of at least FUSED_OFFSET of the output's size);
    otherwise :class:`DeviationState` (cancellation-free)."""
    if x.dtype == torch.float64:
        return AbsoluteState
    if checks or cfg.compile or params.weights[-1].shape[0] >= 64:
        return DeviationState
    if signals:
        return FusedSignalState if cfg.noisy else DeviationState
    if not cfg.noisy:
        offset = float(error_of.scale().mean())
        size = float(torch.linalg.vector_norm(error_of.output_ff, dim=1).mean())
        if not offset >= FUSED_OFFSET * size:
            return DeviationState
    return FusedState


class _Accumulators:
    """The accumulators one simulation asked for (``None`` where not), fed once per step."""

    def __init__(self, cfg: SimulationConfig, params: LayerParams, ff: Feedforward, x: Tensor, u: Tensor,
                 error: OutputError, keep: Tensor | None, forward: bool, feedback: bool, highpass_rate: float | None,
                 record: bool, drive: _ApicalDrive, rule: str, final_state: bool, classification: tuple | None) -> None:
        self.keep, self.params, self.ff = keep, params, ff
        self.sums = ForwardSums(ff.v, cfg.outer_every, keep) if forward else None
        self.feedback = FeedbackSum(drive.width, u, highpass_rate, keep, torch.cat(params.feedback, 0),
                                    transposed=drive.split) if feedback else None
        self.tail = ControlTail(cfg.steps - 1, u) if cfg.noisy else None
        self.trajectory = Trajectory(u, ff.r[-1]) if record else None
        self.stop = None
        if cfg.early_stop and not cfg.noisy and not feedback and not record:
            self.stop = SettledTail(params, ff, error, cfg, self.sums if forward and not final_state else None, rule,
                                    keep, x, classification)

    def check(self, t: int, integral: Tensor | None, u: Tensor, apical: Tensor | None, state) -> Tail | str | None:
        """The early stop's verdict after step ``t`` (``None`` without a check due: go on)."""
        if self.stop is None or not self.stop.due(t):
            return None
        return self.stop.check(t, Deviation(integral, u, apical, state.voltage_deviations()), state.rate_deviations())

    def finish(self, tail: Tail, state, u: Tensor) -> Tensor:
        """Add the closed-form rest of the simulation; the state becomes that of the last time
        point. Returns the last control."""
        if self.sums is not None:
            if tail.signals is None:  # a rule that uses the last point also asked for the sums
                raise RuntimeError("the tail of a final-state rule has no time-average sums")
            self.sums.add_tail(tail, state.rate_deviations())
        dv = tail.final_soma
        dr = [act.rate_deviation(v_ff, r_ff, d) for act, v_ff, r_ff, d in
              zip(self.params.activations, self.ff.v, self.ff.r, dv)]
        state.set_final(dv, dr)
        return tail.final_control

    def control(self, t: int, v_apical: Tensor, u_next: Tensor) -> None:
        """Step t's apical voltage (before the step) and the new control u[t+1]."""
        if self.feedback is not None:
            self.feedback.add(v_apical, u_next)
        if self.tail is not None:
            self.tail.add(t, u_next)

    def signals(self, step_signals: list, state, u: Tensor) -> None:
        """The teaching signals of the step just taken, and the trajectory."""
        if self.sums is not None:
            self.sums.add(step_signals, state.rate_deviations, state.signal_scales)
        if self.trajectory is not None:
            self.trajectory.add(u, state.output_rate())

    def result(self, state, ff: Feedforward, u: Tensor, error_of, alpha: float, finite: bool, steps_done: int,
               error_initial: Tensor) -> SimulationResult:
        dv, dr = state.voltage_deviations(), state.rate_deviations()
        finite = finite and all_finite(u, self.keep) and all(all_finite(d, self.keep) for d in dv)
        error = error_of(dr[-1])
        return SimulationResult(
            v=[a + d for a, d in zip(ff.v, dv)], r=[a + d for a, d in zip(ff.r, dr)], u=u,
            steps_simulated=steps_done, finite=finite, error_initial=error_initial,
            error_final=sample_norm(error), residual=residual(error, alpha, u, ff.r[-1]),
            dv=dv, dr=dr, u_mean=u if self.tail is None else self.tail.mean(steps_done),
            signal_sum=None if self.sums is None else self.sums.signal_sum,
            outer_sum=None if self.sums is None else self.sums.outer_sums(ff.r, dr),
            feedback_sum=None if self.feedback is None else self.feedback.total,
            trajectory={} if self.trajectory is None else self.trajectory.result(),
        )


class _ApicalDrive:
    """The apical input of every layer, step by step: v^A <- (1 - a) v^A + a Q u + noise.

    ``step(u)`` advances it and returns the per-layer apical voltages (B, n_i), or ``u`` itself
    when the state adds Q_i u inside its own GEMMs (float64 without noise, filter or feedback
    learning, where v^A = Q u is never needed on its own). ``current()`` is v^A before the step,
    what the feedback rule pairs with the next control: (B, S), or for the float32 deviation
    form its split form Qbar c + eta (:class:`~lightning_dfc.core.state.Apical`; c <- (1 - a) c
    + a u, eta <- (1 - a) eta + noise), whose sum the rule forms without a (B, S) x (B, n_L) GEMM
    per step for the control part.

    A noisy float32 drive that forms v^A = eta + Qbar c for the state (:class:`FusedSignalState`,
    the deviation form) keeps only that sum, in one buffer, and advances it as eta advances:
    with eta' = D eta + fresh noise, v^A' = D v^A + fresh noise + (c' - D c) Qbar^T, one pass
    and one in-place GEMM (``recursive``; eta itself is never formed, and ``current()`` is v^A).
    """

    def __init__(self, params: LayerParams, cfg: SimulationConfig, x: Tensor, state, accumulate_feedback: bool,
                 generator: torch.Generator | None) -> None:
        self.sizes = [w.shape[0] for w in params.weights]
        self.qbar_t = torch.cat(params.feedback, 0).T  # (n_L, S)
        self.width = self.qbar_t.shape[1]
        self.rate, self.generator, self.cfg = cfg.apical_rate, generator, cfg
        self.split = not isinstance(state, AbsoluteState)
        self.fused = state.fuses_control  # the state forms Qbar c inside its own GEMMs
        # Q_L = I (fixed feedback, a frozen identity): its block of Q u is u itself. For a wide
        # output (the autoencoder: n_L = 784) that block is most of the per-step drive GEMM; for a
        # narrow one the copy costs more than the GEMM block saves.
        self.drive_t = None
        if len(self.sizes) > 1 and self.sizes[-1] >= 64 and _is_identity(params.feedback[-1]):
            self.drive_t = self.qbar_t[:, : -self.sizes[-1]].contiguous()
        self.direct = isinstance(state, AbsoluteState) and self.rate == 1.0 and not cfg.noisy and not accumulate_feedback
        if self.direct and self.drive_t is not None:
            state.feedback_t[-1] = None  # the identity block: u is added as it is
        self.noise_std = _noise_std(params, cfg, x) if cfg.noisy else None
        self.noise_rate = None if cfg.tau_noise is None else cfg.dt / cfg.tau_noise
        self.noise_state = None
        batch = x.shape[0]
        self.v_apical = torch.zeros(batch, self.width, dtype=x.dtype, device=x.device)
        # the split drive writes v^A = Qbar c (+ eta) into one buffer whose per-layer views are made
        # once: a step's v^A is used within the step only
        buffered = self.split and not self.fused and self.drive_t is None
        # noisy: v^A advanced in place in eta's own buffer (see the class docstring)
        self.recursive = buffered and cfg.noisy
        self.buffer = torch.empty_like(self.v_apical) if buffered and not self.recursive else None
        self.views = None if self.buffer is None else torch.split(self.buffer, self.sizes, dim=1)
        self.control = torch.zeros(batch, self.sizes[-1], dtype=x.dtype, device=x.device)
        self.eta = torch.zeros_like(self.v_apical) if cfg.noisy else None
        if self.split and self.noise_std is not None:
            # the split drive keeps the noise part eta = sigma n (filtered noise) or its apical filter
            # in place, the scale folded into one per-column factor of the fresh draw
            scale = self.noise_std if self.noise_rate is None else self.noise_std * (self.noise_rate / cfg.dt**0.5)
            self.draw_scale = scale
            self.eta_decay = 1 - (self.noise_rate if self.noise_rate is not None else self.rate)
            self.source = NoiseSource(self.eta.shape, cfg.noise, x.dtype, x.device, generator)
            own = self.source.buffer  # zeros: the draws go straight into it
            self.draw = None if self.noise_rate is None and self.rate == 1.0 else (
                torch.empty_like(self.eta) if own is None else own)
            if self.draw is None and own is not None:
                self.eta = own
        if self.recursive:  # D, the decay of eta per step
            self.buffer = self.eta
            self.views = torch.split(self.buffer, self.sizes, dim=1)
            self.decay = 0.0 if self.draw is None else (
                1 - self.rate if self.noise_rate is not None and self.rate != 1.0 else self.eta_decay)
            self.drive_control = torch.zeros_like(self.control)  # the c whose Qbar c the buffer holds

    def filtered(self) -> Tensor | None:
        """The apical compartment's filtered control c (B, n_L), ``None`` when it follows Q u at once."""
        return None if self.rate == 1.0 else self.control

    def current(self) -> Tensor | Apical:
        """v^A now: (B, S), or split (valid until the next ``step``, which may write them in place)."""
        if self.recursive:
            return self.buffer
        return Apical(self.control, self.eta) if self.split else self.v_apical

    def step(self, control: Tensor) -> tuple[Tensor, ...] | Tensor:
        if self.rate != 1.0 or self.split:  # c, the filtered control (the early stop's state; the split drive's)
            # (in place: the feedback rule has used the previous one already)
            self.control = control if self.rate == 1.0 else self.control.lerp_(control, self.rate)
        if self.direct:
            return control
        if self.split:
            control = self.control
            if self.fused:
                if self.noise_std is not None:
                    self._advance_eta()
                return Apical(control, self.eta)
            if self.buffer is not None:
                if self.noise_std is None:
                    torch.mm(control, self.qbar_t, out=self.buffer)
                else:  # recursive: the buffer is eta + Qbar c
                    self._advance_eta()
                    if self.decay == 0.0:
                        self.buffer.addmm_(control, self.qbar_t)
                    else:
                        self.buffer.addmm_(torch.add(control, self.drive_control, alpha=-self.decay), self.qbar_t)
                        self.drive_control.copy_(control)
                return self.views
        if self.drive_t is not None:
            drive = torch.cat([control @ self.drive_t, control], 1)
            v_apical = drive if self.rate == 1.0 or self.split else torch.lerp(self.v_apical, drive, self.rate)
        elif self.rate == 1.0 or self.split:
            v_apical = control @ self.qbar_t
        else:  # the apical low-pass filter (1 - a) v^A + a Q u, in the GEMM
            v_apical = torch.addmm(self.v_apical, control, self.qbar_t, beta=1 - self.rate, alpha=self.rate)
        if self.noise_std is not None:
            if self.split:
                self._advance_eta()
                v_apical.add_(self.eta)
            else:
                v_apical.addcmul_(self._noise(), self.noise_std)  # v_apical is always a fresh tensor here
        self.v_apical = v_apical
        return torch.split(v_apical, self.sizes, dim=1)

    def _advance_eta(self) -> None:
        """The split drive's noise part, in place (the feedback rule has used it already): with
        an instantaneous apical compartment eta = sigma n, n the (filtered) noise; with the apical
        filter eta <- (1 - a) eta + sigma sqrt(dt) / tau_A xi."""
        if self.draw is None:
            self.source.scaled(self.draw_scale, self.eta)
            return
        draw = self.source.scaled(self.draw_scale, self.draw)
        if self.noise_rate is not None and self.rate != 1.0:  # both filters: the noise, then the apical one
            self.noise_state = (draw.clone() if self.noise_state is None else
                                torch.add(draw, self.noise_state, alpha=1 - self.noise_rate, out=self.noise_state))
            self.eta.mul_(1 - self.rate).add_(self.noise_state)
        else:  # eta <- decay eta + scale xi, one pass
            torch.add(draw, self.eta, alpha=self.eta_decay, out=self.eta)

    def _noise(self) -> Tensor:
        """White noise (B, S), or low-pass filtered with rate dt / tau_noise (Strong-DFC)."""
        like = self.v_apical
        noise = standard_noise(like.shape, self.cfg.noise, like.dtype, like.device, self.generator)
        if self.noise_rate is not None:
            noise = noise * (self.noise_rate / self.cfg.dt**0.5)
            self.noise_state = noise if self.noise_state is None else noise.add_(self.noise_state, alpha=1 - self.noise_rate)
            noise = self.noise_state
        return noise


def _simulate_in(dtype: torch.dtype, params: LayerParams, x: Tensor, ff: Feedforward, target: Tensor | None,
                 cfg: SimulationConfig, *, delta: Tensor | None, **kwargs) -> SimulationResult:
    """:func:`simulate` in ``dtype`` (``cfg.dtype``), the result cast back to ``x``'s dtype.

    The feedforward pass is recomputed in ``dtype`` rather than cast, so that the state the
    simulation deviates from is consistent (r = phi(v) in that dtype)."""
    back = x.dtype

    def cast(t):
        return None if t is None else t.to(dtype)

    params_in = params.to_dtype(dtype)
    x_in = x.to(dtype)
    result = simulate(params_in, x_in, feedforward(params_in, x_in), cast(target),
                      replace(cfg, dtype=str(dtype).removeprefix("torch.")), delta=cast(delta), **kwargs)
    for name, value in vars(result).items():
        if isinstance(value, Tensor):
            setattr(result, name, value.to(back) if value.is_floating_point() else value)
        elif isinstance(value, list):
            setattr(result, name, [v.to(back) if isinstance(v, Tensor) else v for v in value])
        elif isinstance(value, dict):
            setattr(result, name, {k: v.to(back) for k, v in value.items()})
    return result


def _is_identity(q: Tensor) -> bool:
    """Whether a feedback block is exactly the identity matrix (one host sync per simulation)."""
    return q.shape[0] == q.shape[1] and bool(torch.equal(q, torch.eye(q.shape[0], dtype=q.dtype, device=q.device)))


def output_jacobian(params: LayerParams, v: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    """Jbar = d r_L / d vbar: Jacobian of the output w.r.t. all pre-activations.

    Perturbing v_i propagates through layers i+1..L. Blocks: J_L = diag(phi_L'(v_L)),
    J_i = J_{i+1} W_{i+1} diag(phi_i'(v_i)).

    Args:
        params: network tensors.
        v: pre-activations at which to linearise, list of (B, n_i).

    Returns:
        (B, n_L, S) with S = n_1 + ... + n_L.
    """
    derivs = [act.derivative(vi) for act, vi in zip(params.activations, v)]
    blocks = [torch.diag_embed(derivs[-1])]
    for i in range(params.num_layers - 2, -1, -1):
        blocks.append((blocks[-1] @ params.weights[i + 1]) * derivs[i].unsqueeze(1))
    return torch.cat(blocks[::-1], dim=2)


class SteadyState(NamedTuple):
    """Linearised steady state (Lemma 1): control (B, n_L), voltages and rates lists of (B, n_i),
    and their deviations from the feedforward pass (computed without cancellation)."""

    u: Tensor
    v: list[Tensor]
    r: list[Tensor]
    dv: list[Tensor]
    dr: list[Tensor]


def linearized_steady_state(
    params: LayerParams, x: Tensor, ff: Feedforward, delta: Tensor, alpha: float
) -> SteadyState:
    """The steady state of Lemma 1, as DFC-SSA computes it.

    u_ss = (Jbar Qbar + alpha I)^{-1} delta per sample (Jbar at the feedforward point), then a
    nonlinear forward sweep v_i = W_i r_{i-1} + b_i + Q_i u_ss, r_i = phi_i(v_i), r_0 = x, done in
    deviations: dv_i = W_i dr_{i-1} + Q_i u_ss.

    Args:
        delta: output error r_L* - r_L^- (B, n_L).
        alpha: controller leak.
    """
    jac = output_jacobian(params, ff.v)
    qbar = torch.cat(params.feedback, 0)
    n_out = qbar.shape[1]
    system = jac @ qbar + alpha * torch.eye(n_out, dtype=x.dtype, device=x.device)
    u = torch.linalg.solve(system, delta.unsqueeze(-1)).squeeze(-1)
    shifts = torch.split(u @ qbar.T, [w.shape[0] for w in params.weights], dim=1)
    vs, rs, dvs, drs = [], [], [], []
    for i, act in enumerate(params.activations):
        dv_i = shifts[i] if i == 0 else shifts[i] + drs[-1] @ params.weights[i].T
        r_i, dr_i = act.deviation(ff.v[i], ff.r[i], dv_i)
        vs.append(ff.v[i] + dv_i)
        rs.append(r_i)
        dvs.append(dv_i)
        drs.append(dr_i)
    return SteadyState(u, vs, rs, dvs, drs)
