"""benchmarks/ab_simulate.py runs: an old revision's simulate against today's (a smoke test; the
timings themselves are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
OLD = "3cf54ec"


def test_old_against_new_simulate_runs():
    if subprocess.run(["git", "cat-file", "-e", OLD], cwd=REPO, capture_output=True).returncode:
        pytest.skip(f"revision {OLD} is not in this clone's history")
    import ab_simulate

    results = ab_simulate.main(["--old", OLD, "--cases", "dfc_sleep_float32", "--repeats", "1"])
    assert [r[0] for r in results] == ["dfc_sleep_float32"] and all(t > 0 for r in results for t in r[1:])
