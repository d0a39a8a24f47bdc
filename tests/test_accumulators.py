"""Each accumulator of the simulation loop alone, against its definition (core/accumulators.py)."""

from __future__ import annotations

import torch

from lightning_dfc.core.accumulators import ControlTail, EarlyStop, FeedbackSum, ForwardSums, Trajectory

DT = torch.float64


def _random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def test_forward_sums_equal_the_sums_they_stand_for():
    """outer_i = sum_t s_i[t]^T r_{i-1}[t] exactly with outer_every = 1, and the extrapolation
    counts the last step's signals as further copies."""
    sizes, batch, steps = [4, 3, 2], 5, 7
    ff_v = tuple(_random(batch, n, seed=n) for n in sizes)
    ff_r = tuple(torch.tanh(v) for v in ff_v)
    sums = ForwardSums(ff_v, outer_every=1, keep=None)
    signals = [[_random(batch, n, seed=100 * t + n) for n in sizes] for t in range(steps)]
    drs = [[_random(batch, n, seed=1000 * t + n) for n in sizes] for t in range(steps)]
    for t in range(steps):
        sums.add(signals[t], lambda t=t: drs[t])
    sums.extrapolate(3)
    weight = [1] * (steps - 1) + [4]
    for i, n in enumerate(sizes):
        expected = sum(w * s[i] for w, s in zip(weight, signals))
        torch.testing.assert_close(sums.signal_sum[i], expected)
    outer = sums.outer_sums(ff_r, drs[-1])
    assert outer[0] is None
    for i in range(1, len(sizes)):
        expected = sum(w * s[i].T @ (ff_r[i - 1] + dr[i - 1]) for w, s, dr in zip(weight, signals, drs))
        torch.testing.assert_close(outer[i], expected)


def test_forward_sums_mask_drops_excluded_samples_even_if_not_finite():
    ff_v = (_random(3, 2, seed=0), _random(3, 2, seed=1))
    keep = torch.tensor([True, False, True]).unsqueeze(1)
    sums = ForwardSums(ff_v, outer_every=1, keep=keep)
    bad = torch.full((3, 2), float("nan"), dtype=DT)
    bad[0] = bad[2] = 1.0
    sums.add([bad, bad], lambda: [bad, bad])
    assert torch.isfinite(sums.signal_sum[0]).all() and torch.isfinite(sums.outer_sums(ff_v, [bad, bad])[1]).all()


def test_feedback_sum_with_and_without_high_pass():
    v = [_random(4, 6, seed=t) for t in range(5)]
    u = [_random(4, 2, seed=50 + t) for t in range(5)]
    plain, high = FeedbackSum(6, u[0], None, None), FeedbackSum(6, u[0], 0.25, None)
    for a, b in zip(v, u):
        plain.add(a, b)
        high.add(a, b)
    torch.testing.assert_close(plain.total, sum(a.T @ b for a, b in zip(v, u)))
    ubar, expected = u[0].clone(), torch.zeros(6, 2, dtype=DT)
    for t, (a, b) in enumerate(zip(v, u)):
        ubar = b.clone() if t == 0 else ubar + 0.25 * (b - ubar)
        expected += a.T @ (b - ubar)
    torch.testing.assert_close(high.total, expected)


def test_control_tail_is_the_mean_over_the_last_quarter():
    tail = ControlTail(steps=8, like=torch.zeros(1, 1, dtype=DT))
    for t in range(8):
        tail.add(t, torch.full((1, 1), float(t), dtype=DT))
    assert float(tail.mean(8)) == (6 + 7) / 2


def test_trajectory_keeps_copies():
    u = torch.zeros(2, 1, dtype=DT)
    traj = Trajectory(u, u)
    u += 1.0  # later in-place changes must not reach the record
    traj.add(u, u)
    out = traj.result()
    assert out["u"].shape == (2, 2, 1) and float(out["u"][0].sum()) == 0.0 and float(out["u"][1].sum()) == 2.0


class _State:
    fresh_deviations = True

    def __init__(self, dv):
        self.dv = dv

    def voltage_deviations(self):
        return [d.clone() for d in self.dv]


def test_early_stop_policy():
    u = torch.ones(3, 2, dtype=DT)
    state = _State([torch.ones(3, 4, dtype=DT)])
    stop = EarlyStop(check_every=5, tolerance=1e-3, stop_residual=None, u=u, dv=state.dv, keep=None)
    assert stop.check(3, u, state, None) is None  # not a check step
    assert stop.check(4, u, state, None) == "settled"  # nothing moved
    moving = EarlyStop(5, 1e-3, None, u, state.dv, None)
    assert moving.check(4, u * 2, state, None) is None  # u doubled: not settled, reference updated
    assert moving.check(9, u * 2, state, None) == "settled"
    waiting = EarlyStop(5, 1e-3, 1e-5, u, state.dv, None)
    assert waiting.check(4, u, state, lambda: torch.tensor([1.0, 0.0, 0.0])) is None  # a sample off its fixed point
    assert EarlyStop(5, 1e-3, None, u, state.dv, None).check(4, u * float("nan"), state, None) == "diverged"
