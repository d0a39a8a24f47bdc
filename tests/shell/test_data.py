"""Tests of the data modules (tiny fake IDX files, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import BLACK_PIXEL, ID_PIXEL, WHITE_PIXEL, write_fake_mnist
from torch import nn

from lightning_dfc.shell.data import FashionMNISTDataModule, MNISTDataModule, StudentTeacherDataModule

# the offline data: ../shared/data beside the checkout, or the folder LIGHTNING_DFC_DATA names
SHARED_DATA = Path(os.environ.get("LIGHTNING_DFC_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def offline_data(kind: str, *parts: str) -> Path:
    """``SHARED_DATA/<parts>`` (``kind``: ``subset`` or ``full``). Where it is missing the test is
    skipped, unless LIGHTNING_DFC_REQUIRE_DATA (comma-separated kinds; ``.ci/run`` sets it for the
    folders it finds beside the clone) names the kind: then the test fails, so a CI run whose data
    went missing cannot pass by skipping."""
    path = SHARED_DATA.joinpath(*parts)
    if not (path / "raw").is_dir():
        required = {k.strip() for k in os.environ.get("LIGHTNING_DFC_REQUIRE_DATA", "").split(",") if k.strip()}
        message = f"no offline data at {path}/raw (set LIGHTNING_DFC_DATA to the folder holding it)"
        if kind in required:
            pytest.fail(f"{message}, but LIGHTNING_DFC_REQUIRE_DATA requires the {kind!r} data")
        pytest.skip(message)
    return path.parent if parts[-1] in ("MNIST", "FashionMNIST") else path


def flat_index(pixel: tuple[int, int]) -> int:
    return pixel[0] * 28 + pixel[1]


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    write_fake_mnist(tmp_path, n_train=60, n_test=20)
    return tmp_path


def make_mnist(root: Path, stage: str | None = None, **kwargs) -> MNISTDataModule:
    kwargs.setdefault("val_size", 10)
    dm = MNISTDataModule(data_dir=str(root), **kwargs)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def sample_ids(dataset) -> list[int]:
    """Recover the fake sample indices from the ID pixel (normalisation is monotonic)."""
    return [round(float(x[flat_index(ID_PIXEL)] * 0.3081 + 0.1307) * 255) for x, _ in dataset]


# ----------------------------------------------------------------------------- MNIST


def test_mnist_batch_shapes_and_dtypes(mnist_root: Path) -> None:
    dm = make_mnist(mnist_root, batch_size=8, eval_batch_size=16)
    assert (dm.num_features, dm.num_classes, dm.dims) == (784, 10, (784,))
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 784) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (10, 784)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (16, 784)
    assert len(dm.predict_dataloader()) == 2


def test_mnist_unflattened(mnist_root: Path) -> None:
    dm = make_mnist(mnist_root, flatten=False)
    x, _ = dm.test_set[0]
    assert x.shape == (1, 28, 28) and dm.dims == (1, 28, 28)


def test_mnist_normalisation(mnist_root: Path) -> None:
    dm = make_mnist(mnist_root)
    x, y = dm.test_set[7]  # test set is not shuffled: sample 7, label 7
    assert y == 7
    expected = {
        ID_PIXEL: (7 / 255 - 0.1307) / 0.3081,
        WHITE_PIXEL: (1.0 - 0.1307) / 0.3081,
        BLACK_PIXEL: -0.1307 / 0.3081,
    }
    for pixel, value in expected.items():
        assert x[flat_index(pixel)].item() == pytest.approx(value, abs=1e-5)


def test_fashion_mnist_normalisation(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, n_train=30, n_test=10, folder="FashionMNIST")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=5)
    dm.prepare_data()
    dm.setup()
    x, y = dm.test_set[3]
    assert y == 3 and x.shape == (784,)
    assert x[flat_index(ID_PIXEL)].item() == pytest.approx(3 / 255)
    assert x[flat_index(WHITE_PIXEL)].item() == pytest.approx(1.0)
    assert x.min().item() == 0.0
    assert (len(dm.train_set), len(dm.val_set)) == (25, 5)


def test_split_is_seeded(mnist_root: Path) -> None:
    val_a = sample_ids(make_mnist(mnist_root, split_seed=1).val_set)
    val_b = sample_ids(make_mnist(mnist_root, split_seed=1).val_set)
    val_c = sample_ids(make_mnist(mnist_root, split_seed=2).val_set)
    assert val_a == val_b
    assert val_a != val_c
    dm = make_mnist(mnist_root, split_seed=1)
    train = sample_ids(dm.train_set)
    assert sorted(train + val_a) == list(range(60))  # a partition of the training images


def test_subsets(mnist_root: Path) -> None:
    full = make_mnist(mnist_root)
    dm = make_mnist(mnist_root, train_subset=7, test_subset=3)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7, 10, 3)
    assert sample_ids(dm.train_set) == sample_ids(full.train_set)[:7]  # first N after the split
    assert sample_ids(dm.test_set) == [0, 1, 2]


def test_autoencoder_target_is_input(mnist_root: Path) -> None:
    dm = make_mnist(mnist_root, autoencoder=True, batch_size=4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 784)
    assert torch.equal(x, y)


def test_missing_files_error(tmp_path: Path) -> None:
    raw = write_fake_mnist(tmp_path, n_train=5, n_test=5)
    (raw / "t10k-images-idx3-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte").unlink()
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert str(raw.resolve()) in message
    assert "download=True" in message and "--data.download=true" in message
    with pytest.raises(FileNotFoundError):
        dm.setup("fit")


def test_download_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(self) -> None:
        raise RuntimeError("Error downloading: no network")

    monkeypatch.setattr(MNISTDataModule.dataset_class, "download", no_network)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(RuntimeError, match="no network") as info:
        dm.prepare_data()
    assert "train-images-idx3-ubyte" in str(info.value)
    assert str((tmp_path / "MNIST" / "raw").resolve()) in str(info.value)


def test_val_size_too_large(mnist_root: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=60)
    with pytest.raises(ValueError, match="val_size"):
        dm.setup("fit")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"eval_batch_size": -1},
        {"num_workers": -1},
        {"val_size": -1},
        {"train_subset": 0},
        {"test_subset": 1.5},
    ],
)
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MNISTDataModule(**kwargs)


class _TinyClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(784, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        raise AssertionError("no validation expected with val_size=0")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_without_validation(mnist_root: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=0, batch_size=16)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_TinyClassifier(), datamodule=dm)
    assert trainer.global_step == 4  # 60 images / 16 per batch
    assert dm.val_dataloader() == []


def test_offline_mnist_subset() -> None:
    root = offline_data("subset", "MNIST")
    dm = MNISTDataModule(data_dir=str(root), val_size=500)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (5500, 500, 10000)
    x, y = dm.test_set[0]
    assert x.shape == (784,) and y == 7  # the first official MNIST test digit is a 7
    assert x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


@pytest.mark.parametrize("module, folder, first_train, first_test", [
    (MNISTDataModule, "MNIST", 5, 7), (FashionMNISTDataModule, "FashionMNIST", 9, 9)])
def test_offline_full_data(module, folder: str, first_train: int, first_test: int) -> None:
    """The complete official sets (../shared/data/full): the papers' 55,000 / 5,000 split and all
    10,000 test images; the first official training and test labels (MNIST 5 and 7, Fashion-MNIST
    9 and 9: ankle boots)."""
    root = offline_data("full", "full", folder)
    dm = module(data_dir=str(root), val_size=5000, download=False)
    assert dm.missing_files() == []
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    labels = dm.train_set.dataset.tensors[1]  # the split's subsets index the official training set
    assert len(labels) == 60000 and int(labels[0]) == first_train
    x, y = dm.test_set[0]
    assert x.shape == (784,) and int(y) == first_test


# ----------------------------------------------------------------------------- student-teacher


def small_student_teacher(**kwargs) -> StudentTeacherDataModule:
    defaults = dict(teacher_hidden=[64, 64], num_train=200, num_val=50, num_test=30, batch_size=32)
    dm = StudentTeacherDataModule(**{**defaults, **kwargs})
    dm.setup()
    return dm


def test_student_teacher_shapes() -> None:
    dm = small_student_teacher()
    assert (dm.num_features, dm.num_outputs, dm.dims) == (15, 5, (15,))
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (200, 50, 30)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 15) and y.shape == (32, 5)
    assert x.dtype == y.dtype == torch.float32
    inputs = dm.train_set.tensors[0]
    assert inputs.min() >= -1 and inputs.max() <= 1 and inputs.abs().max() > 0.9
    assert len(dm.test_dataloader()) == 1


def test_student_teacher_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = small_student_teacher(seed=3), small_student_teacher(seed=3)
    c = small_student_teacher(seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for i in range(2):
        assert torch.equal(a.train_set.tensors[i], b.train_set.tensors[i])
        assert torch.equal(a.test_set.tensors[i], b.test_set.tensors[i])
        assert not torch.equal(a.train_set.tensors[i], c.train_set.tensors[i])


def test_student_teacher_default_teacher_is_nonlinear() -> None:
    dm = StudentTeacherDataModule(num_train=500, num_val=10, num_test=10)
    dm.setup()
    x, y = (t.double() for t in dm.train_set.tensors)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    residual = (design @ solution - y).pow(2).mean() / y.var(dim=0).mean()
    assert residual > 0.05  # far from an affine map
    linear = StudentTeacherDataModule(
        teacher_activation="linear", num_train=500, num_val=10, num_test=10, teacher_hidden=[32]
    )
    linear.setup()
    x, y = (t.double() for t in linear.train_set.tensors)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    assert (design @ solution - y).pow(2).mean() / y.var(dim=0).mean() < 1e-10


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"teacher_hidden": [10, 0]}, {"num_train": 0}, {"input_size": -2}],
)
def test_student_teacher_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        StudentTeacherDataModule(**kwargs)


def test_student_teacher_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        StudentTeacherDataModule(teacher_activation="swish")
