"""What a simulation accumulates instead of storing its trajectory, and when it stops early.

Each accumulator is fed once per Euler step and is testable on its own:

* :class:`ForwardSums`: the DFC rule's sums sum_t s_i[t] and sum_t s_i[t]^T r_{i-1}[t] (the
  latter split exactly into a first-order part and an O(lambda^2) correction sampled every
  ``outer_every`` steps).
* :class:`FeedbackSum`: the sleep rule's sum_t v^A[t]^T u[t+1], optionally with the high-pass
  filtered control (Strong-DFC single phase).
* :class:`ControlTail`: the mean control over the last quarter of a noisy simulation.
* :class:`Trajectory`: u and r_L at every time point (only when asked for).

When a noise-free simulation stops early, :meth:`ForwardSums.add_tail` adds the rest of the
trajectory in closed form (:mod:`~lightning_dfc.core.tail`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ForwardSums", "FeedbackSum", "ControlTail", "Trajectory", "residual", "all_finite", "outer_updates"]


def masked(t: Tensor, keep: Tensor | None) -> Tensor:
    """``t`` with the rows outside ``keep`` (B, 1) zeroed (they may be non-finite)."""
    return t if keep is None else torch.where(keep, t, 0.0)


class ForwardSums:
    """sum_t s_i[t] (B, n_i) per layer, and sum_t s_i[t]^T r_{i-1}[t] (n_i, n_{i-1}) for i > 1.

    outer_i = (sum_t s_i)^T r^-_{i-1} + sum_t s_i^T dr_{i-1}[t]: the first term is exact from the
    signal sum; the second is O(lambda^2) and is accumulated every ``outer_every`` steps with the
    weight of the steps it stands for (rectangle rule on the last point of each block).
    """

    def __init__(self, ff_v: tuple[Tensor, ...], outer_every: int, keep: Tensor | None) -> None:
        self.signal_sum = [torch.zeros_like(t) for t in ff_v]
        self.correction = [None] + [t.new_zeros(t.shape[1], p.shape[1]) for p, t in zip(ff_v[:-1], ff_v[1:])]
        self.signals: list[Tensor] = [torch.zeros_like(t) for t in ff_v]
        self.scales = [1.0] * len(ff_v)
        self.outer_every, self.keep, self.pending = outer_every, keep, 0

    def add(self, signals: list[Tensor], rate_deviations, scales: list[float] | None = None) -> None:
        """One step's signals, the true one ``scales[i]`` times the one given (``None``: 1; a
        state that forms them in its own coordinates); ``rate_deviations()`` gives dr_i (B, n_i) when the
        correction is due. The signals may be reused buffers: they are read before the next step."""
        if scales is not None:
            self.scales = scales
        for i, sig in enumerate(signals):
            self.signals[i] = masked(sig, self.keep)
            self.signal_sum[i].add_(self.signals[i], alpha=self.scales[i])
        self.pending += 1
        if self.pending == self.outer_every:
            self._correct(rate_deviations())

    def add_tail(self, tail, dr: list[Tensor]) -> None:
        """The remaining time points in closed form (a :class:`~.tail.Tail`), after the last
        simulated step, whose rate deviations are ``dr``: with s = s* + ds and dr = dr* + ddr
        over the N points,

            sum s = N s* + sum ds,    sum s^T dr = s*^T (N dr* + sum ddr) + (sum ds)^T dr*

        (the product of two deviations from x*, second order in the distance, left out)."""
        if self.pending:
            self._correct(dr)
        for total, increment in zip(self.signal_sum, tail.signal_sums):
            total.add_(increment)
        for correction, increment in zip(self.correction[1:], self._tail_corrections(tail)):
            correction.add_(increment)

    def _tail_corrections(self, tail) -> list[Tensor]:
        return [torch.mm(tail.signals[i].T, tail.rate_sums[i - 1]).addmm_(tail.deviation_sums[i].T, tail.point.dr[i - 1])
                for i in range(1, len(self.signal_sum))]

    def predicted_update(self, tail, dr: list[Tensor], ff_r: tuple[Tensor, ...], x: Tensor) -> list[Tensor]:
        """What the sums would give with ``tail`` added after the last simulated step (rate
        deviations ``dr``), without adding it: per layer the presynaptic sum and the signal's
        batch sum (the update's tensors up to its scale)."""
        out = []
        corrections = self._tail_corrections(tail)
        for i, (total, increment) in enumerate(zip(self.signal_sum, tail.signal_sums)):
            signal = total + increment
            if i == 0:
                out.append(signal.T @ x)
            else:
                outer = torch.addmm(self.correction[i] + corrections[i - 1], signal.T, ff_r[i - 1])
                if self.pending:  # the open block, as _correct adds it
                    outer.addmm_(self.signals[i].T, masked(dr[i - 1], self.keep), alpha=self.pending * self.scales[i])
                out.append(outer)
            out.append(signal.sum(0))
        return out

    def _correct(self, dr: list[Tensor]) -> None:
        for i in range(1, len(self.signals)):  # correction_i += pending * s_i^T dr_{i-1}
            self.correction[i].addmm_(self.signals[i].T, masked(dr[i - 1], self.keep),
                                      alpha=self.pending * self.scales[i])
        self.pending = 0

    def outer_sums(self, ff_r: tuple[Tensor, ...], dr: list[Tensor]) -> list[Tensor | None]:
        """[None, outer_2, ..., outer_L] at the end of the simulation (final dr_i given)."""
        if self.pending:
            self._correct(dr)
        return [None] + [torch.addmm(self.correction[i], self.signal_sum[i].T, ff_r[i - 1])
                         for i in range(1, len(self.signal_sum))]


class FeedbackSum:
    """sum_t v^A[t]^T u[t+1] (S, n_L), or with u[t+1] - ubar[t+1] (``highpass_rate``: ubar an
    exponential moving average with this rate per step, started at u[1]).

    v^A[t] comes as a (B, S) tensor or split, Q c + eta (:class:`~lightning_dfc.core.state.Apical`;
    ``feedback`` is then Qbar, (S, n_L)): the sum is Qbar sum_t c^T u + sum_t eta^T u, kept as
    (n_L, n_L) and (n_L, S) transposes (the GEMM orientation that reads eta once). ``transposed``:
    a (B, S) tensor is summed in that orientation too (the float32 states; float64 sums it as the
    authors do)."""

    def __init__(self, width: int, like: Tensor, highpass_rate: float | None, keep: Tensor | None,
                 feedback: Tensor | None = None, transposed: bool = False) -> None:
        self._total = like.new_zeros(width, like.shape[1])
        self.control_sum = like.new_zeros(like.shape[1], like.shape[1])
        self.noise_sum = like.new_zeros(like.shape[1], width)
        self.split, self.transposed = False, transposed
        self.highpass_rate, self.keep, self.lowpass, self.feedback = highpass_rate, keep, None, feedback

    def add(self, v_apical, u_next: Tensor) -> None:
        if self.highpass_rate is None:
            paired = u_next
        else:
            self.lowpass = u_next.clone() if self.lowpass is None else self.lowpass.lerp_(u_next, self.highpass_rate)
            paired = u_next - self.lowpass
        if isinstance(v_apical, Tensor) and not self.transposed:
            self._total.addmm_(masked(v_apical, self.keep).T, paired)
            return
        self.split = True
        paired_t = paired.T
        if isinstance(v_apical, Tensor):  # the whole v^A in the noise part's orientation
            self.noise_sum.addmm_(paired_t, masked(v_apical, self.keep))
            return
        self.control_sum.addmm_(paired_t, masked(v_apical.control, self.keep))
        if v_apical.noise is not None:
            self.noise_sum.addmm_(paired_t, masked(v_apical.noise, self.keep))

    @property
    def total(self) -> Tensor:
        """The sum, (S, n_L)."""
        if not self.split:
            return self._total
        return torch.addmm(self.noise_sum.T, self.feedback, self.control_sum.T)


class ControlTail:
    """The mean control over the last quarter of the ``steps`` Euler steps (noisy simulations)."""

    def __init__(self, steps: int, like: Tensor) -> None:
        self.start, self.total = steps - steps // 4, torch.zeros_like(like)

    def add(self, t: int, u: Tensor) -> None:
        if t >= self.start:
            self.total.add_(u)

    def mean(self, steps_done: int) -> Tensor:
        return self.total / max(steps_done - self.start, 1)


class Trajectory:
    """u (B, n_L) and r_L (B, n_L) at every time point; stacked to (T, B, n_L) by :meth:`result`."""

    def __init__(self, u: Tensor, r_out: Tensor) -> None:
        self.u, self.r_out = [u.clone()], [r_out.clone()]

    def add(self, u: Tensor, r_out: Tensor) -> None:
        self.u.append(u.clone())
        self.r_out.append(r_out.clone())

    def result(self) -> dict[str, Tensor]:
        return {"u": torch.stack(self.u), "r_L": torch.stack(self.r_out)}


def sample_norm(a: Tensor, dim: int | None = 1) -> Tensor:
    """The Euclidean norm of each sample (row) of ``a`` (B, n) -> (B,) (``dim=None``: of the
    whole tensor), in ``a``'s dtype with its squares summed in float64. In float32 the squares of
    entries below about 1e-19 underflow to 0: a sample that sits at its target (a perfectly
    classified one late in training: its target offset is 1e-20 or less) would get the norm 0,
    and every ratio of such norms (the early stop's rates, its relative distances) 0 / 0."""
    return torch.linalg.vector_norm(a, dim=dim, dtype=torch.float64).to(a.dtype)


def residual(error: Tensor, alpha: float, u: Tensor, output_ff: Tensor) -> Tensor:
    """||e - alpha u|| / ||r_L^-|| per sample (0 at the controller's fixed point e = alpha u)."""
    norm_ff = sample_norm(output_ff).clamp_min(torch.finfo(output_ff.dtype).tiny)
    return sample_norm(error - alpha * u) / norm_ff


def all_finite(t: Tensor, keep: Tensor | None = None) -> bool:
    """Whether every entry (of the rows in ``keep``, (B, 1)) is finite."""
    finite = torch.isfinite(t)
    if keep is not None:
        finite = finite | ~keep
    return bool(finite.all())


def outer_updates(signals: list[Tensor], pres: list[Tensor], biases, scale: float) -> tuple[list, list]:
    """The batch sums of a local rule shaped like the parameters: W_i = scale * s_i^T r_{i-1} and
    b_i = scale * sum_b s_i (``None`` where ``biases[i]`` is ``None``). ``signals[i]`` (B, n_i),
    ``pres[i]`` (B, n_{i-1})."""
    weights = [(scale * s.T) @ pre for s, pre in zip(signals, pres)]
    return weights, [None if b is None else scale * s.sum(0) for s, b in zip(signals, biases)]
