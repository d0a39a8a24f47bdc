"""Averaging hand-written updates across ranks, and the strategies that support it.

DDP averages gradients only inside autograd hooks; updates written straight to ``.grad`` bypass
them and ranks would silently drift apart. :func:`sync_step` averages a training step's updates
explicitly, and agrees on whether any rank's dynamics diverged, in one collective per step.
"""

from __future__ import annotations

import warnings

from collections.abc import Sequence

import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy

__all__ = ["sync_step", "sync_tensors", "check_strategy", "check_precision", "SUPPORTED_PRECISIONS"]

SUPPORTED_PRECISIONS = ("64-true", "32-true", "64", "32", "bf16-true")


def check_strategy(strategy: Strategy) -> None:
    """Refuse strategies whose parameter handling breaks hand-written updates.

    Raises:
        ValueError: for sharded strategies (FSDP, DeepSpeed, ...) and anything else that is
            neither single-device nor DDP.
    """
    if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        return
    raise ValueError(
        f"lightning-dfc does not support the {type(strategy).__name__} strategy: DFC writes its "
        "local updates straight into the parameters' .grad, which sharded strategies (FSDP, "
        "DeepSpeed) do not allow. Use a single device or DDP (strategy='ddp', 'ddp_spawn' or "
        "'ddp_fork')."
    )


def check_precision(precision: str) -> None:
    """Refuse precisions that rescale or autocast hand-written updates (``16-mixed`` etc.).

    Raises:
        ValueError: naming the supported precisions.
    """
    if str(precision) == "bf16-true":
        warnings.warn(
            "precision='bf16-true' keeps the weights and the optimizer in bfloat16 (8 significant bits). "
            "The simulation still runs in the numerics' dtype (float32 fast, float64 exact), but most of "
            "each small update is rounded away when it is added to a weight. Use '64-true' (the paper's "
            "choice) or '32-true' (as accurate in practice).",
            UserWarning, stacklevel=2)
        return
    if str(precision) in SUPPORTED_PRECISIONS:
        return
    raise ValueError(
        f"precision={precision!r} is not supported: mixed precision rescales (16-mixed) or "
        "autocasts the hand-written DFC updates. Use '64-true' (the paper's default) or '32-true' "
        "(the simulation keeps the small activation differences exact in float32 too; docs/user_guide.md, Precision)."
    )


def sync_tensors(strategy: Strategy, tensors: Sequence[torch.Tensor]) -> None:
    """Average tensors over all ranks, in place, with a single all-reduce (no-op on one process).

    The list must have the same shapes in the same order on every rank (:func:`sync_step`
    without a flag)."""
    sync_step(strategy, False, tensors)


@torch.no_grad()
def sync_step(strategy: Strategy, flag: bool, tensors: Sequence[torch.Tensor]) -> bool:
    """One training step's agreement across ranks, in a single all-reduce: whether ``flag`` is
    set on any rank (a diverged simulation: every rank then skips the batch), and the tensors
    (the step's updates) averaged in place. On one process: ``flag``, tensors untouched.

    One ``torch.distributed.all_reduce`` of ``[flag, *tensors]`` flattened, without the barrier
    that Lightning's ``strategy.reduce`` puts before each reduction: between two CPU processes
    (gloo) a barrier or a small all-reduce costs 0.2-0.7 ms (``benchmarks/kernels.py``), and
    each wait at one also absorbs the ranks' difference in compute time; a step used to make
    three such reductions (the flag, the forward and the feedback updates) with a barrier each.
    The tensors must have the same shapes in the same order on every rank; they are averaged in
    the first one's dtype.
    """
    if strategy.world_size <= 1:
        return flag
    dtype = tensors[0].dtype if tensors else torch.float64
    flat = torch.cat([torch.tensor([float(flag)], dtype=dtype, device=strategy.root_device),
                      *(t.reshape(-1).to(dtype) for t in tensors)])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    flat[1:].div_(strategy.world_size)
    offset = 1
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n
    return bool(flat[0] > 0)
