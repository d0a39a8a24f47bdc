"""Shared test helpers."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

IMAGE_SIZE = 28
ID_PIXEL = (0, 0)  # holds the sample index modulo 256
WHITE_PIXEL = (0, 1)  # always 255
BLACK_PIXEL = (0, 2)  # always 0


def fake_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, learnable 28x28 uint8 images and their labels ``i % 10``.

    Image ``i`` is black except: pixel ``ID_PIXEL`` = ``i % 256``, pixel ``WHITE_PIXEL`` = 255,
    and rows ``3 + 2 * label`` and ``4 + 2 * label`` (a horizontal bar encoding the label) = 200.
    """
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 3 + 2 * label : 5 + 2 * label, :] = 200
    images[:, ID_PIXEL[0], ID_PIXEL[1]] = np.arange(n) % 256
    images[:, WHITE_PIXEL[0], WHITE_PIXEL[1]] = 255
    images[:, BLACK_PIXEL[0], BLACK_PIXEL[1]] = 0
    return images, labels


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 2049 for 1-D labels, 2051 for 3-D images)."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: str | Path, n_train: int, n_test: int, folder: str = "MNIST") -> Path:
    """Write tiny MNIST-format IDX files to ``<root>/<folder>/raw/`` and return that folder.

    The files are what ``torchvision.datasets.MNIST(root)`` (or ``FashionMNIST`` with
    ``folder="FashionMNIST"``) reads offline; contents are given by :func:`fake_images`.
    """
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = fake_images(n)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def tiny_sleep():
    """A short, cheap noisy sleep simulation for tests of the schedule (not of the rule)."""
    from lightning_dfc import SimulationConfig

    return SimulationConfig(dt=0.005, steps=10, k_p=0.1, alpha=0.5, tau_v=0.01, tau_apical=0.1,
                            proactive=False, sigma=0.02, early_stop=False)


def tiny_loader():
    """32 samples of 8 features, 3 classes (the argmax of the first three), batches of 16."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    return DataLoader(TensorDataset(x, x[:, :3].argmax(1)), batch_size=16)


def last_wake_spy():
    """A Lightning callback keeping the module's last wake record (``dfc_last_wake``) at the end
    of each wake epoch; listed before a ``ConditionMonitor``, it sees the batch the monitor
    measures (callbacks run in list order)."""
    import lightning.pytorch as pl

    class LastWake(pl.Callback):
        record = None

        def on_train_epoch_end(self, trainer, pl_module):
            if pl_module.dfc_phase.phase.value == "wake":
                self.record = pl_module.dfc_last_wake

    return LastWake()
