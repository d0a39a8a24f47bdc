"""Each accumulator of the simulation loop alone, against its definition (core/accumulators.py)."""

from __future__ import annotations

import torch

from types import SimpleNamespace

from lightning_dfc.core.accumulators import ControlTail, FeedbackSum, ForwardSums, Trajectory

DT = torch.float64


def _random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def test_forward_sums_equal_the_sums_they_stand_for():
    """outer_i = sum_t s_i[t]^T r_{i-1}[t] exactly with outer_every = 1."""
    sizes, batch, steps = [4, 3, 2], 5, 7
    ff_v = tuple(_random(batch, n, seed=n) for n in sizes)
    ff_r = tuple(torch.tanh(v) for v in ff_v)
    sums = ForwardSums(ff_v, outer_every=1, keep=None)
    signals = [[_random(batch, n, seed=100 * t + n) for n in sizes] for t in range(steps)]
    drs = [[_random(batch, n, seed=1000 * t + n) for n in sizes] for t in range(steps)]
    for t in range(steps):
        sums.add(signals[t], lambda t=t: drs[t])
    for i, n in enumerate(sizes):
        torch.testing.assert_close(sums.signal_sum[i], sum(s[i] for s in signals))
    outer = sums.outer_sums(ff_r, drs[-1])
    assert outer[0] is None
    for i in range(1, len(sizes)):
        expected = sum(s[i].T @ (ff_r[i - 1] + dr[i - 1]) for s, dr in zip(signals, drs))
        torch.testing.assert_close(outer[i], expected)


def test_forward_sums_tail_adds_the_sums_over_the_remaining_points():
    """add_tail adds sum s and sum s^T dr over the remaining points, given s = s* + ds and
    dr = dr* + ddr there: N s* + sum ds, and s*^T (N dr* + sum ddr) + (sum ds)^T dr* (the
    second-order sum ds^T ddr is what it leaves out); outer_every = 3: the open block is closed
    at the last simulated step first. predicted_update gives the same without adding."""
    sizes, batch, steps, remaining = [4, 3, 2], 5, 6, 9
    ff_v = tuple(_random(batch, n, seed=n) for n in sizes)
    ff_r = tuple(torch.tanh(v) for v in ff_v)
    x = _random(batch, 7, seed=99)
    signals = [[_random(batch, n, seed=100 * t + n) for n in sizes] for t in range(steps)]
    drs = [[_random(batch, n, seed=1000 * t + n) for n in sizes] for t in range(steps)]
    star_s = [_random(batch, n, seed=7 + n) for n in sizes]
    star_dr = [_random(batch, n, seed=70 + n) for n in sizes]
    path_ds = [[_random(batch, n, seed=5000 + 10 * k + n) * 1e-3 for n in sizes] for k in range(remaining)]
    path_ddr = [[_random(batch, n, seed=9000 + 10 * k + n) * 1e-3 for n in sizes] for k in range(remaining)]
    sum_ds = [sum(p[i] for p in path_ds) for i in range(3)]
    sum_ddr = [sum(p[i] for p in path_ddr) for i in range(3)]
    tail = SimpleNamespace(signals=star_s, point=SimpleNamespace(dr=star_dr), deviation_sums=sum_ds,
                           signal_sums=[remaining * star_s[i] + sum_ds[i] for i in range(3)],
                           rate_sums=[remaining * star_dr[i] + sum_ddr[i] for i in range(3)])
    sums = ForwardSums(ff_v, outer_every=3, keep=None)
    for t in range(steps):
        sums.add(signals[t], lambda t=t: drs[t])
    sums.add(signals[-1], lambda: drs[-1])  # a seventh step (the same signals) leaves a block open
    predicted = sums.predicted_update(tail, drs[-1], ff_r, x)
    sums.add_tail(tail, drs[-1])
    all_signals = signals + [signals[-1]]
    blocks = {2: 3, 5: 3, 6: 1}  # each block's last step stands for the block (the last one closed early)
    path_s = [[star_s[i] + p[i] for i in range(3)] for p in path_ds]
    path_dr = [[star_dr[i] + p[i] for i in range(3)] for p in path_ddr]
    for i in range(3):
        expected = sum(s[i] for s in all_signals) + sum(s[i] for s in path_s)
        torch.testing.assert_close(sums.signal_sum[i], expected)
        torch.testing.assert_close(predicted[2 * i + 1], expected.sum(0))
    torch.testing.assert_close(predicted[0], sums.signal_sum[0].T @ x)
    outer = sums.outer_sums(ff_r, drs[-1])
    for i in range(1, 3):
        simulated = sum(s[i].T @ ff_r[i - 1] for s in all_signals) + sum(
            w * all_signals[t][i].T @ (drs[t][i - 1] if t < steps else drs[-1][i - 1]) for t, w in blocks.items())
        extrapolated = sum(s[i].T @ (ff_r[i - 1] + dr[i - 1]) for s, dr in zip(path_s, path_dr))
        second_order = sum(p[i].T @ q[i - 1] for p, q in zip(path_ds, path_ddr))
        torch.testing.assert_close(outer[i], simulated + extrapolated - second_order)
        torch.testing.assert_close(predicted[2 * i], outer[i])


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
