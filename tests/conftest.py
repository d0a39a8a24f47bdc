"""Shared fixtures."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast alone and about twice as fast on a busy
    2-core machine (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No pytest arguments in the CLI parser; relative outputs (lightning_logs/, data/) in tmp."""
    monkeypatch.setattr(sys, "argv", ["lightning-dfc"])
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def exact_numerics() -> Iterator[None]:
    """Core functions called with unset numerics levers compute in the published numerics
    (float64, every step, Gaussian noise) instead of the default ``fast``: for the tests that
    check the simulation itself against brute force and theory. ``tests/core/test_numerics.py``
    checks ``fast`` against ``exact``."""
    from lightning_dfc.core import dynamics
    from lightning_dfc.core.numerics import EXACT

    default = dynamics.DEFAULT_NUMERICS
    dynamics.DEFAULT_NUMERICS = EXACT
    yield
    dynamics.DEFAULT_NUMERICS = default
