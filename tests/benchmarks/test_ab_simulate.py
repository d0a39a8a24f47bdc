"""benchmarks/ab_simulate.py: an old revision's simulate against today's compute the same update
under one noise seed (what makes their timings comparable; the timings themselves are never
asserted), and a case the old revision cannot run stops with an error that names why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
OLD = "3cf54ec"


def _old_revision_or_skip():
    if subprocess.run(["git", "cat-file", "-e", OLD], cwd=REPO, capture_output=True).returncode:
        pytest.skip(f"revision {OLD} is not in this clone's history")
    import ab_simulate

    return ab_simulate


def test_old_and_new_simulate_give_the_same_update_under_one_seed():
    ab_simulate = _old_revision_or_skip()
    results = ab_simulate.main(["--old", OLD, "--cases", "dfc_sleep", "dfc_sleep_float32", "--repeats", "1"])
    assert [r[0] for r in results] == ["dfc_sleep", "dfc_sleep_float32"]
    (_, *_times64, differ64), (_, *_times32, differ32) = results
    assert differ64 <= 1e-12  # float64: the same draws, the same sums, rounding apart
    assert differ32 <= 1e-6  # float32 sleep: rounding of float32 sums
    assert all(t > 0 for r in results for t in r[1:3])


def test_the_disagreement_is_measured():
    """The measure itself: 0 for equal updates, 1 - cos for others, and a mismatch of layouts refused."""
    ab_simulate = _old_revision_or_skip()
    a = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0, 2.0]])]
    assert ab_simulate.disagreement(a, [t.clone() for t in a]) == pytest.approx(0.0, abs=1e-15)
    assert ab_simulate.disagreement(a, [torch.tensor([0.0, 1.0]), a[1]]) == pytest.approx(1.0)
    assert ab_simulate.disagreement(a, [a[0], -a[1]]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="tensors"):
        ab_simulate.disagreement(a, a[:1])


def test_a_case_the_old_revision_cannot_run_is_named():
    ab_simulate = _old_revision_or_skip()
    with pytest.raises(ValueError, match="has no classify"):
        ab_simulate.main(["--old", OLD, "--cases", "dfc_wake", "--repeats", "1"])
    import lightning_dfc.core.rules as rules
    from lightning_dfc.core import dynamics

    assert rules.simulate is dynamics.simulate  # the old one does not stay behind for later tests
