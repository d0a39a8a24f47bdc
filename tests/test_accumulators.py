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


def test_forward_sums_tail_is_the_sum_of_the_geometric_approach():
    """add_tail adds sum_k s(t0 + k) and sum_k s(t0 + k)^T r(t0 + k) for s(t0 + k) = s* + rho^k
    (s(t0) - s*), dr likewise, k = 1..N, per sample rho (outer_every = 3: the pending block is
    flushed at t0 first)."""
    sizes, batch, steps, remaining = [4, 3, 2], 5, 6, 9
    ff_v = tuple(_random(batch, n, seed=n) for n in sizes)
    ff_r = tuple(torch.tanh(v) for v in ff_v)
    signals = [[_random(batch, n, seed=100 * t + n) for n in sizes] for t in range(steps)]
    drs = [[_random(batch, n, seed=1000 * t + n) for n in sizes] for t in range(steps)]
    rho = torch.linspace(0.1, 0.9, batch, dtype=DT)
    star_s = [_random(batch, n, seed=7 + n) for n in sizes]
    star_dr = [_random(batch, n, seed=70 + n) for n in sizes]
    ks = torch.arange(1, remaining + 1, dtype=DT)
    powers = rho.unsqueeze(1) ** ks  # (B, N)
    tail = SimpleNamespace(remaining=remaining, signals=star_s, point=SimpleNamespace(dr=star_dr),
                           geometric=powers.sum(1, keepdim=True), geometric2=(powers**2).sum(1, keepdim=True))
    sums = ForwardSums(ff_v, outer_every=3, keep=None)
    for t in range(steps - 1):
        sums.add(signals[t], lambda t=t: drs[t])
    sums.add(signals[-1], lambda: drs[-1])  # t0: the pending block is flushed by add_tail
    sums.add_tail(tail, drs[-1])
    path_s = [[star_s[i] + powers[:, k, None] * (signals[-1][i] - star_s[i]) for i in range(3)] for k in range(remaining)]
    path_dr = [[star_dr[i] + powers[:, k, None] * (drs[-1][i] - star_dr[i]) for i in range(3)] for k in range(remaining)]
    for i in range(3):
        torch.testing.assert_close(sums.signal_sum[i], sum(s[i] for s in signals) + sum(s[i] for s in path_s))
    outer = sums.outer_sums(ff_r, drs[-1])
    # the simulated part with outer_every = 3 (each block's last step stands for the block), then the tail
    weights = {2: 3, 5: 3}
    for i in range(1, 3):
        simulated = sum(s[i].T @ ff_r[i - 1] for s in signals) + sum(
            w * signals[t][i].T @ drs[t][i - 1] for t, w in weights.items())
        extrapolated = sum(s[i].T @ (ff_r[i - 1] + dr[i - 1]) for s, dr in zip(path_s, path_dr))
        torch.testing.assert_close(outer[i], simulated + extrapolated)


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
