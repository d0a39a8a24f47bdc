"""Learning rules: the forward-weight updates of every method and the sleep rule.

Every update is returned in the *gradient* sign convention of the reference implementation:
write it to ``.grad`` and let any torch optimizer subtract it. Shapes match the parameters.

Scaling conventions (made explicit because the paper's text leaves them out):

* ``delta = r_L* - r_L^- = -lambda * d(loss)/d(r_L)`` with the **batch-mean** loss, so delta
  carries a 1/B (and 1/n_L for MSE).
* Forward rules are batch means with the reference's factor 2: DFC
  ``dW_i = -2/(B T) sum_t sum_b [phi(v_i[t]) - phi(v^B_i[t])] r_{i-1}[t]^T``.
* The reference divides every learning rate by lambda (``normalize_lr``); that belongs to the
  optimizer configuration, not to these functions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .accumulators import outer_updates
from .config import SimulationConfig
from .control_loss import control_loss
from .divergence import state_ratio
from .dynamics import (
    Feedforward,
    SimulationResult,
    feedforward,
    linearized_steady_state,
    resolve_levers,
    simulate,
    teaching_signal,
)
from .linear_sleep import linear_sleep_applies, simulate_sleep_linear
from .losses import Loss, loss_value
from .network import LayerParams
from .targets import HoldOutput, StrongTarget

__all__ = [
    "Update",
    "FeedbackRule",
    "feedback_gradients",
    "dfc_update",
    "dfc_ss_update",
    "dfc_ssa_update",
    "dfa_update",
    "bp_update",
    "feedback_update",
    "ConvergenceCriterion",
]


@dataclass
class Update:
    """Updates shaped like the parameters (gradient sign), plus statistics of the simulation.

    Attributes:
        weights: one tensor per layer, (n_i, n_{i-1}).
        biases: one tensor (n_i,) or ``None`` per layer.
        stats: scalars for logging: ``steps`` simulated, ``non_converged`` and ``diverged``
            sample counts, ``excluded`` samples, ``finite`` (1.0 / 0.0), ``error_ratio`` (final
            over initial mean control error; > 1 means the dynamics diverged), and for strong
            feedback ``control_loss`` H = mean_b ||Qbar u_ss||^2.
        feedback: single-phase learning only: the feedback-weight updates Q_1..Q_L computed
            from the same simulation (gradient sign), each (n_i, n_L).
        control: the steady-state control u_ss of the simulation (B, n_L), if one was run.
        output: the feedforward output r_L^- (B, n_L) the update was computed from, if the
            method formed it (the training step logs the loss from it).
    """

    weights: list[Tensor]
    biases: list[Tensor | None]
    stats: dict[str, float] = field(default_factory=dict)
    feedback: list[Tensor] | None = None
    control: Tensor | None = None
    output: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        """W_1, b_1, ..., W_L, b_L (biases only where present), matching
        :meth:`DFCNetwork.forward_parameters`."""
        return [t for w, b in zip(self.weights, self.biases) for t in (w, b) if t is not None]


@dataclass(frozen=True)
class ConvergenceCriterion:
    """The reference's per-sample convergence test of a simulated steady state.

    A sample has converged if ``||r_L - (r_L* - alpha u)|| / ||r_L^-|| < threshold`` (it sits at
    the controller's fixed point) and ``error_final < epsilon^2 * error_initial`` (the control
    error shrank). It has diverged if the first ratio exceeds 1 or a value is non-finite.

    Args:
        threshold: fixed-point tolerance (reference 1e-5).
        epsilon: required error reduction factor, squared (reference ``epsilon_di`` = 0.5).
        exclude: drop non-converged samples from the update (the reference default) instead of
            including them. Either way they are counted.
    """

    threshold: float = 1e-5
    epsilon: float = 0.5
    exclude: bool = False

    def classify(self, result: SimulationResult) -> tuple[Tensor, Tensor]:
        """Boolean (B,) masks ``converged`` and ``diverged``."""
        finite = torch.isfinite(result.residual) & torch.isfinite(result.error_final)
        converged = (
            finite
            & (result.residual < self.threshold)
            & (result.error_final <= self.epsilon**2 * result.error_initial)
        )
        diverged = ~finite | (result.residual > 1.0)
        return converged, diverged


@dataclass(frozen=True)
class FeedbackRule:
    """Scaling of the feedback-weight rule dQ_i = s_i / (K B) sum_t sum_b v^A_i[t] u[t+1]^T + wd Q_i.

    Args:
        weight_decay: wd, added to the update here (functional use). The Lightning module leaves
            this at 0 and gives the decay to the feedback optimizer instead, as both reference
            code bases do (Adam ``weight_decay``: it acts after the update has been clipped).
        sigma_floor: s_i = 1 / max(sigma_i, sigma_floor)^2 (the reference's cap).
        highpass_tau: pair v^A with the high-pass filtered control (Strong-DFC, ``tau_f``);
            ``None``: the plain control (DFC's sleep phase).
        layer_scaling: multiply layer i's update by (1 + tau_v / tau_noise)^(L - i), i = 1..L
            (reference ``scaling_fb_updates``; needs low-pass filtered noise).
        clock: the simulation whose ``dt`` and ``tau_v`` set the high-pass rate dt / highpass_tau
            and the layer scaling's tau_v; ``None``: the simulation that drives the rule. The
            authors' single-phase pre-training uses the *wake* simulation's values while it
            simulates with its own (``FeedbackConfig.pretrain_mode``).
    """

    weight_decay: float = 0.0
    sigma_floor: float = 0.01
    highpass_tau: float | None = None
    layer_scaling: bool = False
    clock: SimulationConfig | None = None

    def highpass_rate(self, cfg: SimulationConfig) -> float | None:
        """The low-pass filter's rate per step when ``cfg`` drives the rule (``None``: no filter)."""
        if self.highpass_tau is None:
            return None
        return (self.clock or cfg).dt / self.highpass_tau


def feedback_gradients(
    params: LayerParams, feedback_sum: Tensor, batch: int, cfg: SimulationConfig, rule: FeedbackRule
) -> list[Tensor]:
    """The feedback rule's updates from an accumulated sum_t v^A[t]^T u[t+1] (S, n_L), one per Q_i.

    ``cfg`` is the simulation that produced the sum: its T, noise levels and tau_noise."""
    sizes = [w.shape[0] for w in params.weights]
    norm = (cfg.steps - 1) * batch
    n_layers = params.num_layers
    if rule.layer_scaling and cfg.tau_noise is None:
        raise ValueError("feedback layer_scaling needs low-pass filtered noise (simulation.tau_noise)")
    tau_v = (rule.clock or cfg).tau_v
    grads = []
    for i, block in enumerate(torch.split(feedback_sum, sizes, dim=0)):
        sigma = cfg.output_sigma if i == n_layers - 1 else cfg.sigma
        scale = 1.0 / max(sigma, rule.sigma_floor) ** 2
        if rule.layer_scaling:
            scale *= (1.0 + tau_v / cfg.tau_noise) ** (n_layers - i - 1)
        grad = block * (scale / norm)
        grads.append(grad if rule.weight_decay == 0 else grad + rule.weight_decay * params.feedback[i])
    return grads


def _offset(ff: Feedforward, target: Tensor | None, delta: Tensor | None) -> Tensor:
    if delta is not None:
        return delta
    if target is None:
        raise ValueError("pass the output target r_L* or its offset delta = r_L* - r_L^-")
    return target - ff.r[-1]


def _steady_state_rule(
    params: LayerParams,
    x: Tensor,
    ff: Feedforward,
    dv: list[Tensor],
    dr: list[Tensor],
    mask: Tensor | None,
    rule: str,
) -> Update:
    """DFC-SS / DFC-SSA rule at a steady state given as deviations from the feedforward pass:
    -2/B sum_b [phi(v_i) - phi(W_i r_{i-1} + b_i)] r_{i-1}^T, with v^B_i - v^-_i = W_i dr_{i-1}."""
    batch = x.shape[0]
    pres = [x, *(a + d for a, d in zip(ff.r[:-1], dr[:-1]))]
    signals = []
    for i, act in enumerate(params.activations):
        dvb = None if i == 0 else dr[i - 1] @ params.weights[i].T
        signals.append(teaching_signal(rule, act, ff.v[i], dv[i], dvb, ff.r[i]))
    if mask is not None:  # where, not multiply: excluded rows may hold inf/NaN
        signals = [torch.where(mask.unsqueeze(1), t, 0.0) for t in signals]
        pres = [torch.where(mask.unsqueeze(1), t, 0.0) for t in pres]
    return Update(*outer_updates(signals, pres, params.biases, -2.0 / batch))


def _simulation_stats(
    result: SimulationResult, criterion: ConvergenceCriterion
) -> tuple[dict[str, float], Tensor]:
    converged, diverged = criterion.classify(result)
    # error growth over the samples that enter the update (all, or the converged ones when
    # excluding); a non-finite error counts as infinite growth
    used = converged if criterion.exclude else torch.ones_like(converged)
    final, initial = result.error_final[used], result.error_initial[used]
    if not bool(torch.isfinite(final).all()):
        ratio = float("inf")
    else:
        ratio = float(final.mean() / initial.mean()) if float(initial.mean()) > 0 else 0.0
    stats = {
        "steps": float(result.steps_simulated),
        "non_converged": float((~converged).sum()),
        "diverged": float(diverged.sum()),  # samples (the batch's skip decision is the shell's)
        "finite": float(result.finite),
        "excluded": 0.0,
        "error_ratio": ratio,  # > 1: the controller made the output error grow (unstable dynamics)
        "state_ratio": state_ratio(result.v, result.dv),
    }
    return stats, converged


def dfc_ss_update(
    params: LayerParams,
    x: Tensor,
    ff: Feedforward,
    target: Tensor | None,
    cfg: SimulationConfig,
    criterion: ConvergenceCriterion = ConvergenceCriterion(),
    rule: str = "nonlinear_difference",
    *,
    delta: Tensor | None = None,
    output_error: str = "linear",
    generator: torch.Generator | None = None,
) -> Update:
    """DFC-SS: simulate, then apply the local rule at the final (steady) state only.

    ``delta`` (= target - r_L^-, computed directly) may replace ``target`` for precision;
    ``output_error`` as in :func:`~lightning_dfc.core.dynamics.simulate` (``softmax``: Strong-DFC).
    An early stop bounds what it extrapolates at the last time point, which the rule uses."""
    offset = _offset(ff, target, delta) if output_error == "linear" else None
    classify = (criterion.threshold, criterion.epsilon) if criterion.exclude else None
    result = simulate(params, x, ff, target, cfg, delta=offset, output_error=output_error, generator=generator,
                      final_state=True, classify=classify)
    stats, converged = _simulation_stats(result, criterion)
    mask = None
    if criterion.exclude:
        mask = converged
        stats["excluded"] = stats["non_converged"]
        stats["finite"] = float(all(bool(torch.isfinite(t[converged]).all()) for t in result.v))
    update = _steady_state_rule(params, x, ff, result.dv, result.dr, mask, rule)
    update.stats = {**stats, "control_loss": float(control_loss(params, result.u_mean, reduction="mean"))}
    update.control = result.u_mean
    return update


def dfc_ssa_update(
    params: LayerParams,
    x: Tensor,
    ff: Feedforward,
    target: Tensor | None,
    alpha: float,
    rule: str = "nonlinear_difference",
    *,
    delta: Tensor | None = None,
) -> Update:
    """DFC-SSA: the local rule at the analytical linearised steady state (Lemma 1)."""
    steady = linearized_steady_state(params, x, ff, _offset(ff, target, delta), alpha)
    update = _steady_state_rule(params, x, ff, steady.dv, steady.dr, None, rule)
    update.stats = {"steps": 0.0, "non_converged": 0.0, "diverged": 0.0, "excluded": 0.0,
                    "finite": float(all(bool(torch.isfinite(t).all()) for t in steady.v))}
    return update


def _continuous_rule(params: LayerParams, x: Tensor, result: SimulationResult, steps: int) -> tuple[list, list]:
    scale = -2.0 / (x.shape[0] * steps)
    weights, biases = [], []
    for i in range(params.num_layers):
        s_sum = result.signal_sum[i]
        outer = s_sum.T @ x if i == 0 else result.outer_sum[i]
        weights.append(scale * outer)
        biases.append(None if params.biases[i] is None else scale * s_sum.sum(0))
    return weights, biases


def dfc_update(
    params: LayerParams,
    x: Tensor,
    ff: Feedforward,
    target: Tensor | None,
    cfg: SimulationConfig,
    criterion: ConvergenceCriterion = ConvergenceCriterion(),
    generator: torch.Generator | None = None,
    rule: str = "nonlinear_difference",
    *,
    delta: Tensor | None = None,
    output_error: str = "linear",
    feedback_rule: FeedbackRule | None = None,
) -> Update:
    """DFC: the local rule applied continuously, averaged over all T time points (eq. 5).

    -2/(B T) sum_{t=0}^{T-1} sum_b [phi(v_i[t]) - phi(v^B_i[t])] r_{i-1}[t]^T, with r_{i-1}[t] the
    controlled presynaptic rate at the same time point (x for the first layer).
    With ``criterion.exclude``, non-converged samples are known only at the end: the batch is
    then simulated a second time with the same noise, accumulating only converged samples.
    ``delta`` (= target - r_L^-, computed directly) may replace ``target`` for precision.
    ``output_error`` as in :func:`~lightning_dfc.core.dynamics.simulate` (``softmax``: Strong-DFC).
    With ``feedback_rule`` (single-phase learning) the same simulation also yields the
    feedback-weight updates (``Update.feedback``), from the converged samples when excluding.
    """
    delta = _offset(ff, target, delta) if output_error == "linear" else None
    single_phase = feedback_rule is not None
    if single_phase and not cfg.noisy:
        raise ValueError("single-phase feedback learning needs noise in the dynamics (sigma > 0)")
    highpass = feedback_rule.highpass_rate(cfg) if single_phase else None
    if criterion.exclude and cfg.noisy and generator is None:
        generator = torch.Generator(x.device).manual_seed(int(torch.randint(2**62, (1,))))
    noise_state = generator.get_state() if generator is not None else None
    classify = (criterion.threshold, criterion.epsilon) if criterion.exclude else None
    result = simulate(params, x, ff, target, cfg, delta=delta, output_error=output_error, accumulate_forward=True,
                      accumulate_feedback=single_phase, highpass_rate=highpass, generator=generator, rule=rule,
                      classify=classify)
    stats, converged = _simulation_stats(result, criterion)
    if criterion.exclude and not bool(converged.all()):
        if generator is not None:
            generator.set_state(noise_state)
        result = simulate(params, x, ff, target, cfg, delta=delta, output_error=output_error,
                          accumulate_forward=True, accumulate_feedback=single_phase, highpass_rate=highpass,
                          generator=generator, rule=rule, sample_mask=converged)
        stats["excluded"] = stats["non_converged"]
        stats["finite"] = float(result.finite)
    weights, biases = _continuous_rule(params, x, result, cfg.steps)
    stats["control_loss"] = float(control_loss(params, result.u_mean, reduction="mean"))
    feedback = None
    if single_phase:
        used = int(converged.sum()) if criterion.exclude else x.shape[0]
        feedback = feedback_gradients(params, result.feedback_sum, max(used, 1), cfg, feedback_rule)
    return Update(weights, biases, stats, feedback, result.u_mean)


def dfa_update(params: LayerParams, x: Tensor, ff: Feedforward, delta: Tensor) -> Update:
    """Direct Feedback Alignment with fixed feedback B_i = Q_i (Q_L = I for the output layer).

    Hidden target h_i* = h_i + B_i delta, so dW_i = 2/B sum_b [phi'(v_i) * (-B_i delta)] r_{i-1}^T.
    """
    batch = x.shape[0]
    pres = [x, *ff.r[:-1]]
    signals = [act.derivative(ff.v[i]) * -(delta @ params.feedback[i].T) for i, act in enumerate(params.activations)]
    return Update(*outer_updates(signals, pres, params.biases, 2.0 / batch), {"steps": 0.0})


def bp_update(params: LayerParams, x: Tensor, y: Tensor, loss: Loss) -> Update:
    """Backpropagation: the autograd gradient of the batch-mean loss (for comparison)."""
    with torch.enable_grad():
        weights = [w.detach().requires_grad_() for w in params.weights]
        biases = [None if b is None else b.detach().requires_grad_() for b in params.biases]
        leaf = LayerParams(tuple(weights), tuple(biases), params.activations, params.feedback)
        value = loss_value(feedforward(leaf, x).r[-1], y, loss)
        present = [t for t in (*weights, *biases) if t is not None]
        grads = dict(zip(map(id, present), torch.autograd.grad(value, present)))
    return Update(
        [grads[id(w)] for w in weights],
        [None if b is None else grads[id(b)] for b in biases],
        {"steps": 0.0, "loss": float(value.detach())},
    )


def feedback_update(
    params: LayerParams,
    x: Tensor,
    cfg: SimulationConfig,
    weight_decay: float = 0.0,
    sigma_floor: float = 0.01,
    generator: torch.Generator | None = None,
    *,
    rule: FeedbackRule | None = None,
    y: Tensor | None = None,
    loss: Loss = "cross_entropy",
    strong_class_value: float | None = None,
    output_error: str | None = None,
    target=None,
) -> tuple[list[Tensor], dict[str, float]]:
    """Feedback-weight rule on one batch: DFC's sleep phase (paper eq. 13) or Strong-DFC's
    feedback pre-training.

    DFC: noise drives the apical compartments while the controller holds the output at the
    noise-free feedforward output. Per layer, with pairs (v^A[t], u[t+1]), t = 0..T-2:

        dQ_i = s_i / ((T - 1) B) sum_t sum_b v^A_i[t] u[t+1]^T + weight_decay * Q_i

    (gradient sign: the optimizer step is anti-Hebbian). ``s_i = 1 / max(sigma_i, sigma_floor)^2``
    with sigma_i the layer's noise std (``sigma_output`` for Q_L): the reference caps the scale at
    1e4, which all its computer-vision configs hit.

    Strong-DFC (``strong_class_value`` and labels ``y`` given): the controller drives the output
    to the label (:func:`strong_target`; two-phase sleep epochs and pre-training), and
    ``rule.highpass_tau`` replaces u by its high-pass filtered part (single-phase pre-training).
    ``target`` (a :class:`~lightning_dfc.core.targets.Target`) replaces ``strong_class_value``
    and ``output_error``: :class:`~lightning_dfc.core.targets.HoldOutput` is DFC's sleep phase.
    ``output_error`` overrides the error the controller sees (``linear``: e = r_L* - r_L, what the
    authors' pre-training used with cross-entropy; ``None``: the loss's own, see
    :func:`strong_target`). ``rule`` (a :class:`FeedbackRule`) overrides
    ``weight_decay``/``sigma_floor``.

    Returns:
        (one tensor per Q_i shaped (n_i, n_L), statistics).
    """
    if not cfg.noisy:
        raise ValueError("feedback learning needs noise: set sleep.sigma > 0")

    rule = rule or FeedbackRule(weight_decay, sigma_floor)
    if target is None and strong_class_value is not None:
        if y is None:
            raise ValueError("strong-feedback pre-training drives the output to the labels: pass y")
        target = StrongTarget(strong_class_value, linear_error=output_error == "linear")
    elif target is None:
        if output_error not in (None, "linear"):
            raise ValueError("DFC's sleep phase holds the output at the feedforward output: its error is linear")
        target = HoldOutput()
    levers = resolve_levers(cfg)
    holds_output, width = isinstance(target, HoldOutput), params.weights[-1].shape[0]
    if linear_sleep_applies(levers, rule.highpass_rate(cfg), holds_output, width) is None:
        feedback_sum, stats = simulate_sleep_linear(params, x, levers, generator)
        return feedback_gradients(params, feedback_sum, x.shape[0], cfg, rule), stats
    ff = feedforward(params, x)
    control = target.control(ff.r[-1], y, loss, 0.0)
    target, delta, output_error = control
    result = simulate(params, x, ff, target, cfg, delta=delta, output_error=output_error, accumulate_feedback=True,
                      highpass_rate=rule.highpass_rate(cfg), generator=generator)
    grads = feedback_gradients(params, result.feedback_sum, x.shape[0], cfg, rule)
    initial, final = float(result.error_initial.mean()), float(result.error_final.mean())
    stats = {
        "steps": float(result.steps_simulated),
        "finite": float(result.finite),
        "control_norm": float(torch.linalg.vector_norm(result.u, dim=1).mean()),
        "state_ratio": state_ratio(result.v, result.dv),
        # the sleep phase's hold-the-output target starts at zero error: no ratio there
        "error_ratio": (final / initial if initial > 0 else 0.0) if math.isfinite(final) else float("inf"),
    }
    return grads, stats
