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

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor

from .config import RULES, SimulationConfig
from .network import LayerParams

__all__ = [
    "Feedforward",
    "SimulationResult",
    "SteadyState",
    "feedforward",
    "simulate",
    "output_jacobian",
    "linearized_steady_state",
    "teaching_signal",
    "RULES",
]


class Feedforward(NamedTuple):
    """The feedforward pass: ``v[i]`` pre-activations and ``r[i]`` rates, each ``(B, n_{i+1})``."""

    v: tuple[Tensor, ...]
    r: tuple[Tensor, ...]


def _linear(params: LayerParams, i: int, pre: Tensor) -> Tensor:
    """W_i pre + b_i for 0-based layer index i; ``pre`` is (B, n_{i-1})."""
    bias = params.biases[i]
    if bias is None:
        return pre @ params.weights[i].T
    return torch.addmm(bias, pre, params.weights[i].T)


def feedforward(params: LayerParams, x: Tensor) -> Feedforward:
    """Feedforward pass of the network (eq. 2). ``x``: (B, n_0)."""
    vs, rs = [], []
    pre = x
    for i, act in enumerate(params.activations):
        v = _linear(params, i, pre)
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
        steps_simulated: Euler steps actually run (<= T - 1; fewer after an early stop).
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


def _noise_std(params: LayerParams, cfg: SimulationConfig, like: Tensor) -> Tensor:
    """Per-column std of the apical noise increment, (S,)."""
    sizes = [w.shape[0] for w in params.weights]
    tau_a = cfg.tau_apical if cfg.tau_apical is not None else cfg.dt
    std = torch.full((sum(sizes),), cfg.sigma, dtype=like.dtype, device=like.device)
    std[-sizes[-1]:] = cfg.output_sigma
    # white noise enters as sigma sqrt(dt) / tau_A xi; filtered noise as sigma n (n carries its scale)
    return std if cfg.tau_noise is not None else std * (cfg.dt**0.5 / tau_a)


OUTPUT_ERRORS = ("linear", "softmax")


def simulate(
    params: LayerParams,
    x: Tensor,
    ff: Feedforward,
    target: Tensor | None,
    cfg: SimulationConfig,
    *,
    delta: Tensor | None = None,
    output_error: str = "linear",
    accumulate_forward: bool = False,
    accumulate_feedback: bool = False,
    highpass_rate: float | None = None,
    generator: torch.Generator | None = None,
    record: bool = False,
    rule: str = "nonlinear_difference",
    sample_mask: Tensor | None = None,
    stop_residual: float | None = None,
    outer_every: int | None = None,
) -> SimulationResult:
    """Simulate the controlled network from its feedforward state towards ``target``.

    The state is simulated as deviations from the feedforward pass, dv_i = v_i - v^-_i and
    dr_i = r_i - r^-_i, and the teaching signals are formed from these small quantities with
    cancellation-free identities (:meth:`Activation.deviation`, :meth:`Activation.difference`).
    Late in training the deviations are ~1e-6 of the voltages: simulating absolute voltages in
    float32 would lose every significant digit of the signal, this form keeps float32 updates
    equal to float64 ones. float64 uses the cheaper plain difference phi(v) - phi(v^B) for the
    signal (no precision problem there).

    Args:
        params: network tensors (see :class:`LayerParams`).
        x: input (B, n_0).
        ff: its feedforward pass (the initial state).
        target: output target r_L* (B, n_L); may be ``None`` when ``delta`` is given.
        cfg: simulation hyperparameters.
        delta: r_L* - r^-_L (B, n_L), e.g. -lambda dL/dr_L computed directly. Pass it in low
            precision: forming it as ``target - r^-_L`` cancels.
        output_error: ``linear``: the controller sees e = r_L* - r_L (DFC); ``softmax``:
            e = r_L* - softmax(r_L) (Strong-DFC with cross-entropy; ``target`` = soft labels).
        accumulate_forward: accumulate the forward-weight teaching signals (DFC rule).
        accumulate_feedback: accumulate v^A[t]^T u[t+1] (sleep-phase feedback rule).
        highpass_rate: with ``accumulate_feedback``, pair v^A[t] with the high-pass filtered
            control u[t+1] - ubar[t+1] instead, ubar an exponential moving average with this rate
            per step (dt / tau_f) started at u[1] (Strong-DFC's single-phase feedback rule: removes
            the mean control that holds the output at the label, keeps the noise-driven part).
        generator: random generator for the noise (``cfg.sigma > 0``); ``None``: torch's global RNG.
        record: also return the trajectories of u and r_L (costs memory O(T)).
        rule: teaching signal accumulated with ``accumulate_forward``: ``nonlinear_difference``
            phi(v) - phi(v^B) (the paper's eq. 5) or ``voltage_difference`` v - v^B (Theorem 2).
        stop_residual: with early stopping, also require every sample's fixed-point residual
            ||e - alpha u|| / ||r_L^-|| below this before stopping (so that an early stop never
            classifies a sample as non-converged that the full run would converge).
        outer_every: override ``cfg.outer_every`` (1 = exact). Noisy simulations always use 1:
            the noise changes the presynaptic rates from one step to the next, so sampling them
            every k-th step would alias.
        sample_mask: boolean (B,): accumulate only these samples (the others still evolve, even
            to non-finite values, without touching the sums); finiteness is judged on them only.

    Returns:
        :class:`SimulationResult`. With ``cfg.early_stop`` (``True`` or ``None``; no noise, no feedback
        accumulation) the simulation stops once settled and the remaining time points are added
        to the sums as copies of the final state: the time-averaged update is that of all T points.
    """
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}; choose one of {RULES}")
    if cfg.dtype is not None and getattr(torch, cfg.dtype) != x.dtype:
        return _simulate_in(getattr(torch, cfg.dtype), params, x, ff, target, cfg, delta=delta,
                            output_error=output_error, accumulate_forward=accumulate_forward,
                            accumulate_feedback=accumulate_feedback, highpass_rate=highpass_rate,
                            generator=generator, record=record, rule=rule, sample_mask=sample_mask,
                            stop_residual=stop_residual, outer_every=outer_every)
    n_layers = params.num_layers
    acts = params.activations
    weights = params.weights
    sizes = [w.shape[0] for w in weights]
    steps = cfg.steps - 1
    dt, alpha, k_p = cfg.dt, cfg.alpha, cfg.k_p
    apical_rate = cfg.apical_rate
    qbar_t = torch.cat(params.feedback, 0).T  # (n_L, S)
    # Q_L = I (fixed feedback, a frozen identity): its block of Q u is u itself. For a wide
    # output (the autoencoder: n_L = 784) that block is most of the per-step drive GEMM; for a
    # narrow one the copy costs more than the GEMM block saves.
    drive_t = None
    if n_layers > 1 and sizes[-1] >= 64 and _is_identity(params.feedback[-1]):
        drive_t = qbar_t[:, : -sizes[-1]].contiguous()
    noise_std = _noise_std(params, cfg, x) if cfg.noisy else None
    noise_rate = None if cfg.tau_noise is None else dt / cfg.tau_noise
    noise_state = None
    u_lowpass = None
    tail_start = steps - steps // 4  # the mean control over the last quarter (noisy runs)
    u_tail = torch.zeros_like(ff.r[-1]) if cfg.noisy else None
    early_stop = cfg.early_stop is not False and not cfg.noisy and not accumulate_feedback and not record
    keep = None if sample_mask is None else sample_mask.unsqueeze(1)
    output_error_of = _output_error(output_error, target, delta, ff)

    state = (_AbsoluteState if x.dtype == torch.float64 else _DeviationState)(params, ff, cfg, rule)
    # float64 without noise, apical filter or feedback learning: the apical voltage Q_i u is never
    # needed on its own, so each layer adds it to its basal voltage inside one addmm
    direct = isinstance(state, _AbsoluteState) and apical_rate == 1.0 and not cfg.noisy and not accumulate_feedback
    if direct and drive_t is not None:
        state.feedback_t[-1] = None  # the identity block: u is added as it is
    u = torch.zeros_like(ff.r[-1])
    u_int = torch.zeros_like(u)
    v_apical = torch.zeros(x.shape[0], qbar_t.shape[1], dtype=x.dtype, device=x.device)
    error = output_error_of(state.output_deviation())
    error_initial = torch.linalg.vector_norm(error, dim=1)

    signal_sum = [torch.zeros_like(t) for t in ff.v] if accumulate_forward else None
    # outer_sum_i = (sum_t s_i)^T r^-_{i-1} + sum_t s_i^T dr_{i-1}[t]: the first term is exact from
    # signal_sum; the second is O(lambda^2) and is accumulated every `outer_every` steps.
    correction = (
        [None] + [x.new_zeros(sizes[i], sizes[i - 1]) for i in range(1, n_layers)]
        if accumulate_forward
        else None
    )
    outer_every = 1 if cfg.noisy else (cfg.outer_every if outer_every is None else outer_every)
    pending = 0
    feedback_sum = x.new_zeros(qbar_t.shape[1], qbar_t.shape[0]) if accumulate_feedback else None
    traj_u, traj_r = ([u.clone()], [ff.r[-1].clone()]) if record else ([], [])
    check_u, check_dv = u.clone(), state.voltage_deviations()
    finite = True
    signals: list[Tensor] = [torch.zeros_like(t) for t in ff.v]
    steps_done = steps

    for t in range(steps):
        if t > 0:
            error = output_error_of(state.output_deviation())
        if k_p > 0:
            u_int.add_(error, alpha=dt).add_(u, alpha=-alpha * dt)
            u_new = torch.add(u_int, error, alpha=k_p)
        else:
            u_new = u + dt * (error - alpha * u)
        control = u_new if cfg.proactive else u
        if direct:  # v^A_i = Q_i u enters each layer's somatic input through its own GEMM
            v_apical_new = None
        elif drive_t is not None:
            drive = torch.cat([control @ drive_t, control], 1)
            v_apical_new = drive if apical_rate == 1.0 else torch.lerp(v_apical, drive, apical_rate)
        elif apical_rate == 1.0:
            v_apical_new = control @ qbar_t
        else:  # the apical low-pass filter (1 - a) v^A + a Q u, in the GEMM
            v_apical_new = torch.addmm(v_apical, control, qbar_t, beta=1 - apical_rate, alpha=apical_rate)
        if noise_std is not None:
            noise = torch.randn(v_apical.shape, dtype=x.dtype, device=x.device, generator=generator)
            if noise_rate is not None:  # low-pass filtered noise (Strong-DFC)
                noise = noise * (noise_rate / dt**0.5)
                noise_state = noise if noise_state is None else noise.add_(noise_state, alpha=1 - noise_rate)
                noise = noise_state
            v_apical_new.addcmul_(noise, noise_std)  # v_apical_new is always a fresh tensor here
        if feedback_sum is not None:
            pre_apical = v_apical if keep is None else torch.where(keep, v_apical, 0.0)
            if highpass_rate is None:
                feedback_sum.addmm_(pre_apical.T, u_new)
            else:
                u_lowpass = u_new.clone() if u_lowpass is None else u_lowpass.lerp_(u_new, highpass_rate)
                feedback_sum.addmm_(pre_apical.T, u_new - u_lowpass)
        if u_tail is not None and t >= tail_start:
            u_tail.add_(u_new)
        v_apical, u = v_apical_new, u_new
        apical = control if direct else torch.split(v_apical, sizes, dim=1)

        step_signals = state.step(apical, signal_sum is not None)
        if signal_sum is not None:
            for i, sig in enumerate(step_signals):
                signals[i] = sig if keep is None else torch.where(keep, sig, 0.0)
                signal_sum[i].add_(signals[i])

        if signal_sum is not None:
            pending += 1
            if pending == outer_every:
                _add_correction(correction, signals, state.rate_deviations(), pending, keep)
                pending = 0
        if record:
            traj_u.append(u.clone())
            traj_r.append(state.output_rate())

        if early_stop and (t + 1) % cfg.check_every == 0:
            if not _all_finite(u, keep):
                finite, steps_done = False, t + 1
                break
            dv = state.voltage_deviations()
            if _settled(u, dv, check_u, check_dv, cfg.tolerance * cfg.check_every) and (
                stop_residual is None
                or bool((_residual(output_error_of(state.output_deviation()), alpha, u, ff.r[-1])
                         < stop_residual).all())
            ):
                steps_done = t + 1
                remaining = steps - steps_done
                if signal_sum is not None and remaining > 0:
                    for i, s in enumerate(signals):
                        signal_sum[i].add_(s, alpha=remaining)
                    pending += remaining
                break
            check_u.copy_(u)
            check_dv = dv if state.fresh_deviations else [d.clone() for d in dv]

    dv, dr = state.voltage_deviations(), state.rate_deviations()
    outer_sum = None
    if signal_sum is not None:
        if pending:
            _add_correction(correction, signals, dr, pending, keep)
        outer_sum = [None] + [
            torch.addmm(correction[i], signal_sum[i].T, ff.r[i - 1]) for i in range(1, n_layers)
        ]
    finite = finite and _all_finite(u, keep) and all(_all_finite(d, keep) for d in dv)
    error = output_error_of(dr[-1])
    error_final = torch.linalg.vector_norm(error, dim=1)
    residual = _residual(error, alpha, u, ff.r[-1])
    trajectory = {"u": torch.stack(traj_u), "r_L": torch.stack(traj_r)} if record else {}
    return SimulationResult(
        v=[a + d for a, d in zip(ff.v, dv)],
        r=[a + d for a, d in zip(ff.r, dr)],
        u=u,
        steps_simulated=steps_done,
        finite=finite,
        error_initial=error_initial,
        error_final=error_final,
        residual=residual,
        dv=dv,
        dr=dr,
        u_mean=u if u_tail is None else u_tail / max(steps_done - tail_start, 1),
        signal_sum=signal_sum,
        outer_sum=outer_sum,
        feedback_sum=feedback_sum,
        trajectory=trajectory,
    )



def _simulate_in(dtype: torch.dtype, params: LayerParams, x: Tensor, ff: Feedforward, target: Tensor | None,
                 cfg: SimulationConfig, *, delta: Tensor | None, **kwargs) -> SimulationResult:
    """:func:`simulate` in ``dtype`` (``cfg.dtype``), the result cast back to ``x``'s dtype.

    The feedforward pass is recomputed in ``dtype`` rather than cast, so that the state the
    simulation deviates from is consistent (r = phi(v) in that dtype)."""
    back = x.dtype

    def cast(t):
        return None if t is None else t.to(dtype)

    params_in = params._replace(
        weights=tuple(cast(w) for w in params.weights),
        biases=tuple(cast(b) for b in params.biases),
        feedback=tuple(cast(q) for q in params.feedback),
    )
    x_in = x.to(dtype)
    result = simulate(params_in, x_in, feedforward(params_in, x_in), cast(target), replace(cfg, dtype=None),
                      delta=cast(delta), **kwargs)
    for name, value in vars(result).items():
        if isinstance(value, Tensor):
            setattr(result, name, value.to(back) if value.is_floating_point() else value)
        elif isinstance(value, list):
            setattr(result, name, [v.to(back) if isinstance(v, Tensor) else v for v in value])
        elif isinstance(value, dict):
            setattr(result, name, {k: v.to(back) for k, v in value.items()})
    return result


def _output_error(kind: str, target: Tensor | None, delta: Tensor | None, ff: Feedforward):
    """The controller's error e as a function of the output deviation dr_L, (B, n_L) -> (B, n_L)."""
    if kind == "linear":
        if delta is None:
            if target is None:
                raise ValueError("simulate needs a target r_L* or its offset delta = r_L* - r_L^-")
            delta = target - ff.r[-1]
        return lambda dr_out: delta - dr_out
    if kind == "softmax":
        if target is None:
            raise ValueError("output_error='softmax' needs the target probabilities (soft labels)")
        return lambda dr_out: target - torch.softmax(ff.r[-1] + dr_out, dim=1)
    raise ValueError(f"unknown output_error {kind!r}; choose one of {OUTPUT_ERRORS}")


def _layer_step(
    act,
    rule: str,
    dv: Tensor,
    apical: Tensor,
    dvb: Tensor | None,
    soma_rate: float,
    v_ff: Tensor,
    r_ff: Tensor,
    slope_ff: Tensor | None,
    want_signal: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer's somatic Euler step and teaching signal, in deviations; all (B, n_i).

    dv <- dv + dt/tau_v (v^A + dvb - dv); dr = phi(v_ff + dv) - r_ff; signal as :func:`_signal`.
    ``dvb`` is the basal deviation W_i dr_{i-1} (``None`` for the first layer, whose basal input
    is constant). Element-wise only, so that ``torch.compile`` can fuse it into one kernel.
    """
    dv = torch.lerp(dv, apical if dvb is None else apical + dvb, soma_rate)
    dr = act.rate_deviation(v_ff, r_ff, dv, slope_ff)
    signal = _signal(rule, act, v_ff, r_ff, dv, dr, dvb, slope_ff) if want_signal else None
    return dv, dr, signal


class _DeviationState:
    """The network's state as deviations from the feedforward pass, dv_i = v_i - v^-_i and
    dr_i = r_i - r^-_i (float32: the teaching signals from cancellation-free identities)."""

    fresh_deviations = False  # voltage_deviations() returns the live state: copy to keep it

    def __init__(self, params: LayerParams, ff: Feedforward, cfg: SimulationConfig, rule: str) -> None:
        self.params, self.ff, self.cfg, self.rule = params, ff, cfg, rule
        self.soma_rate = cfg.dt / cfg.tau_v
        self.dv = [torch.zeros_like(t) for t in ff.v]
        self.dr = [torch.zeros_like(t) for t in ff.r]
        self.slopes = [act.derivative(v) if act.name == "tanh" else None for act, v in zip(params.activations, ff.v)]
        self.layer_step = _compiled_layer_step() if cfg.compile else _layer_step

    def step(self, apical: tuple[Tensor, ...], want_signal: bool) -> list[Tensor | None]:
        """One somatic Euler step of every layer given its apical voltage (B, n_i); the teaching
        signals of this step (``None`` entries unless ``want_signal``)."""
        weights, dr, n_layers = self.params.weights, self.dr, self.params.num_layers
        dvb: list[Tensor | None] = [None] * n_layers  # basal deviation W_i dr_{i-1} (None: layer 1)
        if not self.cfg.inst_transmission:  # every layer sees the previous step's presynaptic rates
            dvb = [None] + [dr[i - 1] @ weights[i].T for i in range(1, n_layers)]
        signals = []
        for i in range(n_layers):
            if self.cfg.inst_transmission and i > 0:
                dvb[i] = dr[i - 1] @ weights[i].T
            self.dv[i], dr[i], sig = self.layer_step(
                self.params.activations[i], self.rule, self.dv[i], apical[i], dvb[i], self.soma_rate,
                self.ff.v[i], self.ff.r[i], self.slopes[i], want_signal,
            )
            signals.append(sig)
        return signals

    def output_deviation(self) -> Tensor:
        return self.dr[-1]

    def output_rate(self) -> Tensor:
        return self.ff.r[-1] + self.dr[-1]

    def voltage_deviations(self) -> list[Tensor]:
        return self.dv

    def rate_deviations(self) -> list[Tensor]:
        return self.dr


class _AbsoluteState(_DeviationState):
    """float64: absolute voltages v_i and rates r_i, as the authors simulate them (the plain
    differences phi(v) - phi(v^B) are accurate to ~1e-16 there). Fewer element-wise passes per
    step than the deviation form: v^B_i = W_i r_{i-1} + b_i is one ``addmm``, and deviations are
    formed only when asked for (convergence checks, the outer-product correction, the result)."""

    fresh_deviations = True

    def __init__(self, params: LayerParams, ff: Feedforward, cfg: SimulationConfig, rule: str) -> None:
        self.params, self.ff, self.cfg, self.rule = params, ff, cfg, rule
        self.soma_rate = cfg.dt / cfg.tau_v
        self.v, self.r = list(ff.v), list(ff.r)  # replaced, never written in place
        self.feedback_t: list[Tensor | None] = [q.T for q in params.feedback]  # (n_L, n_i) views; None: I

    def step(self, apical: tuple[Tensor, ...] | Tensor, want_signal: bool) -> list[Tensor | None]:
        """As :meth:`_DeviationState.step`; ``apical`` may also be the control u (B, n_L), whose
        feedback Q_i u is then added to each layer's basal voltage in one ``addmm``."""
        params, r, n_layers = self.params, self.r, self.params.num_layers
        basal = [self.ff.v[0]] + [None] * (n_layers - 1)  # layer 1's basal voltage W_1 x + b_1 is constant
        if not self.cfg.inst_transmission:
            basal[1:] = [_linear(params, i, r[i - 1]) for i in range(1, n_layers)]
        signals = []
        for i, act in enumerate(params.activations):
            if basal[i] is None:
                basal[i] = _linear(params, i, r[i - 1])
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


def _add_correction(
    correction: list, signals: list[Tensor], dr: list[Tensor], weight: int, keep: Tensor | None = None
) -> None:
    """correction_i += weight * s_i^T dr_{i-1}  (the O(lambda^2) part of the outer sum)."""
    for i in range(1, len(signals)):
        shift = dr[i - 1]
        if keep is not None:  # excluded rows may be non-finite: 0 * inf would poison the sum
            shift = torch.where(keep, shift, 0.0)
        correction[i].addmm_(signals[i].T, shift, alpha=weight)


def _residual(error: Tensor, alpha: float, u: Tensor, output_ff: Tensor) -> Tensor:
    """||e - alpha u|| / ||r_L^-|| per sample (0 at the controller's fixed point e = alpha u)."""
    norm_ff = torch.linalg.vector_norm(output_ff, dim=1).clamp_min(torch.finfo(output_ff.dtype).tiny)
    return torch.linalg.vector_norm(error - alpha * u, dim=1) / norm_ff


def _is_identity(q: Tensor) -> bool:
    """Whether a feedback block is exactly the identity matrix (one host sync per simulation)."""
    return q.shape[0] == q.shape[1] and bool(torch.equal(q, torch.eye(q.shape[0], dtype=q.dtype, device=q.device)))


def _all_finite(t: Tensor, keep: Tensor | None = None) -> bool:
    finite = torch.isfinite(t)
    if keep is not None:
        finite = finite | ~keep
    return bool(finite.all())


def _settled(u: Tensor, dv: list[Tensor], check_u: Tensor, check_dv: list[Tensor], tol: float) -> bool:
    """Whether, for every sample, u and dv = v - v_ff changed by less than ``tol`` (relative).

    A state whose norms overflow is never settled.
    """
    du = torch.linalg.vector_norm(u - check_u, dim=1)
    ddv = torch.sqrt(sum(torch.sum((a - b) ** 2, dim=1) for a, b in zip(dv, check_dv)))
    dev = torch.sqrt(sum(torch.sum(a**2, dim=1) for a in dv))
    nu = torch.linalg.vector_norm(u, dim=1)
    finite = torch.isfinite(du) & torch.isfinite(ddv) & torch.isfinite(dev) & torch.isfinite(nu)
    return bool((finite & (du <= tol * nu) & (ddv <= tol * dev)).all())


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
