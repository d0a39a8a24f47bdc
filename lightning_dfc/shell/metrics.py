"""torchmetrics wrappers of :mod:`lightning_dfc.core.diagnostics`.

Every metric accumulates a ``sum`` and a ``count`` (float64, ``dist_reduce_fx="sum"``), so
``compute()`` is the exact mean over every sample seen by every rank, whatever the batch sizes.
Non-finite per-sample values (e.g. the NaN angle of an all-zero update) are left out of the mean
and counted in the ``skipped`` state.

Callback usage (Lightning cannot log a callback-owned Metric object directly): call ``update``
as often as needed, then ``pl_module.log(name, metric.compute())`` and ``metric.reset()``.
Move the metric to the data's device first (``metric.to(device)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from ..core import diagnostics as D
from ..core.dynamics import Feedforward, feedforward
from ..core.network import LayerParams

__all__ = ["Condition1", "Condition2", "Condition3Margin", "Stability", "AlignmentAngle"]


class _MeanMetric(Metric):
    """Exact global mean of per-sample values: ``sum`` / ``count`` states, summed across ranks."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("skipped", default=zero.clone(), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor) -> Tensor:
        """Add the finite entries of ``values`` (any shape); returns the finite mask."""
        values = values.detach().reshape(-1).to(self.sum.dtype)
        finite = torch.isfinite(values)
        self.sum += torch.where(finite, values, 0.0).sum()
        self.count += finite.sum()
        self.skipped += (~finite).sum()
        return finite

    def compute(self) -> Tensor:
        """The mean of every finite value seen (NaN if none)."""
        return self.sum / self.count


def _jacobian(params: LayerParams, x, v, jacobian) -> Tensor:
    if jacobian is not None:
        return jacobian
    return D.jacobian_at(params, x=x, v=v)


class Condition1(_MeanMetric):
    """Mean over samples of :func:`~lightning_dfc.core.diagnostics.condition_1` (std/mean of the
    layer norms; 0 = Condition 1 holds). ``update(x, rates)`` with ``rates`` the feedforward
    pass or its rates."""

    higher_is_better = False

    def update(self, x: Tensor, rates: Feedforward | Sequence[Tensor]) -> None:
        self._accumulate(D.condition_1(x, rates))


class Condition2(_MeanMetric):
    """Mean over samples of :func:`~lightning_dfc.core.diagnostics.condition_2` (||P Qbar|| / ||Qbar||;
    1 = Condition 2 holds).

    ``update(params, x)``: Jacobian at the feedforward point of x; or ``update(params, v=...)``
    at given pre-activations; or ``update(params, jacobian=...)``. Qbar is ``params.feedback``.
    """

    higher_is_better = True

    def update(
        self,
        params: LayerParams,
        x: Tensor | None = None,
        *,
        v: Sequence[Tensor] | None = None,
        jacobian: Tensor | None = None,
    ) -> None:
        jac = _jacobian(params, x, v, jacobian)
        self._accumulate(D.condition_2(jac, torch.cat(params.feedback, 0)))


class Condition3Margin(_MeanMetric):
    """Condition 3 margin alpha - max Re eig(-Jbar Qbar): its mean, and the fraction of samples
    with a positive margin (Condition 3 holds).

    Args:
        alpha: the controller leak.

    ``update`` takes the arguments of :class:`Condition2`. ``compute()`` returns a dict
    ``{"margin": mean margin, "fraction": fraction of samples satisfying Condition 3}``
    (log it with ``log_dict``).
    """

    higher_is_better = True

    def __init__(self, alpha: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("satisfied", default=zero, dist_reduce_fx="sum")

    def update(
        self,
        params: LayerParams,
        x: Tensor | None = None,
        *,
        v: Sequence[Tensor] | None = None,
        jacobian: Tensor | None = None,
    ) -> None:
        jac = _jacobian(params, x, v, jacobian)
        margin = D.condition_3(jac, torch.cat(params.feedback, 0), self.alpha).margin
        finite = self._accumulate(margin)
        self.satisfied += ((margin.detach() > 0) & finite).sum()

    def compute(self) -> dict[str, Tensor]:
        return {"margin": self.sum / self.count, "fraction": self.satisfied / self.count}


class Stability(_MeanMetric):
    """Mean over samples of :func:`~lightning_dfc.core.diagnostics.stability`: the largest real part
    of the eigenvalues of the linearised network + PI-controller system (< 0: stable).

    Args:
        alpha, k_p, tau_v: the dynamics' leak, proportional gain and somatic time constant
            (or use :meth:`from_config`).

    ``update(params, v)``: linearised at the pre-activations ``v`` (e.g. the simulated steady
    state); ``update(params, x=x)``: at the feedforward point of ``x``. Costs O(B (S + n_L)^3).
    """

    higher_is_better = False

    def __init__(self, alpha: float, k_p: float, tau_v: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha, self.k_p, self.tau_v = float(alpha), float(k_p), float(tau_v)

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "Stability":
        """From a :class:`~lightning_dfc.core.config.SimulationConfig`."""
        return cls(cfg.alpha, cfg.k_p, cfg.tau_v, **kwargs)

    def update(
        self, params: LayerParams, v: Sequence[Tensor] | None = None, *, x: Tensor | None = None
    ) -> None:
        if v is None:
            if x is None:
                raise ValueError("Stability.update needs the pre-activations v or the input x")
            v = feedforward(params, x).v
        self._accumulate(D.stability(params, v, self.alpha, self.k_p, self.tau_v))


class AlignmentAngle(_MeanMetric):
    """Mean of angles in degrees.

    ``update(a, b)``: adds the whole-network angle between two updates (tensors or lists of
    tensors, see :func:`~lightning_dfc.core.diagnostics.angle`) as one observation.
    ``update(angles)``: adds precomputed angles (any shape, one observation per element, e.g.
    the per-sample angles of ``feedback_alignment(..., reduction="none")``).
    NaN angles (an all-zero update) are skipped (counted in ``skipped``).
    """

    higher_is_better = False

    def update(
        self, a: Tensor | Sequence[Tensor], b: Tensor | Sequence[Tensor] | None = None
    ) -> None:
        self._accumulate(torch.as_tensor(a) if b is None else D.angle(a, b))
