"""LightningDataModules for the DFC experiments.

* :class:`MNISTDataModule` and :class:`FashionMNISTDataModule`: torchvision image data sets,
  normalised as in the DFC reference code and flattened to 784 features, with a seeded
  train/validation split, optional subsets for quick runs and an autoencoder mode.
* :class:`StudentTeacherDataModule`: the synthetic regression task of the DFC paper (Fig. 3),
  targets produced by a random, fixed teacher MLP.

The image modules never download silently: with ``download=False`` (the default) the raw IDX
files must already be under ``<data_dir>/<folder>/raw/``, otherwise a :class:`DataNotFoundError`
(a ``FileNotFoundError``) lists the missing files and the folder they belong in; with
``download=True`` and no network, a :class:`DataDownloadError` (also a ``RuntimeError``) says so.
The ``lightning-dfc`` command prints either as one ``error:`` line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from torchvision import datasets, transforms

from ..core.activations import Activation

__all__ = ["MNISTDataModule", "FashionMNISTDataModule", "StudentTeacherDataModule", "DataNotFoundError",
           "DataDownloadError"]


class DataNotFoundError(FileNotFoundError):
    """The data set's raw files are not where the data module looks, and it may not download them.

    Attributes:
        short: one line for the command line: what is missing where, and the two ways out.
    """

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


class DataDownloadError(DataNotFoundError, RuntimeError):
    """``download=True``, but the download failed (no network, a blocked or moved mirror)."""

_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _check_int(name: str, value: Any, minimum: int | None = 1, allow_none: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is an int >= ``minimum`` (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or (minimum is not None and value < minimum):
        what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        if allow_none:
            what += " or None"
        raise ValueError(f"`{name}` must be {what}, got {value!r}; pass a valid --data.{name}")


class _Flatten:
    """Flatten a ``[C, H, W]`` image tensor to ``[C * H * W]`` (picklable for worker processes)."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.reshape(-1)


class _AutoencoderDataset(Dataset):
    """Wrap an ``(x, label)`` data set so that each sample is ``(x, x)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, _ = self.dataset[index]
        return x, x


class _TorchvisionImageDataModule(LightningDataModule):
    """Shared logic of the 28x28 grey-scale torchvision data sets (MNIST, Fashion-MNIST).

    Subclasses set ``dataset_class`` (whose name is also the folder under ``data_dir``),
    ``mean`` and ``std``.

    Args:
        data_dir: root folder; the raw IDX files live in ``<data_dir>/<folder>/raw/``.
        batch_size: training batch size.
        eval_batch_size: batch size of the validation/test/predict loaders
            (default: ``batch_size``).
        num_workers: data-loader worker processes (0 = load in the main process).
        val_size: number of training images held out for validation (0 = no validation).
        train_subset: keep only the first N training samples after the split (quick runs).
        test_subset: keep only the first N test samples.
        split_seed: seed of the train/validation split.
        autoencoder: if True the target is the input itself instead of the label.
        download: download the data set if it is missing (needs internet access).
        flatten: flatten images to 784 features (otherwise ``[1, 28, 28]``).

    Batches are ``(x, y)`` with ``x`` float32 of shape ``[B, 784]`` (``[B, 1, 28, 28]`` with
    ``flatten=False``) and ``y`` the int64 labels ``[B]``, or ``x`` itself with
    ``autoencoder=True``.
    """

    dataset_class: ClassVar[type[datasets.MNIST]]
    mean: ClassVar[float]
    std: ClassVar[float]
    image_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        train_subset: int | None = None,
        test_subset: int | None = None,
        split_seed: int = 42,
        autoencoder: bool = False,
        download: bool = False,
        flatten: bool = True,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size)
        _check_int("eval_batch_size", eval_batch_size, allow_none=True)
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("val_size", val_size, minimum=0)
        _check_int("train_subset", train_subset, allow_none=True)
        _check_int("test_subset", test_subset, allow_none=True)
        _check_int("split_seed", split_seed, minimum=None)
        self.save_hyperparameters()
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.split_seed = split_seed
        self.autoencoder = autoencoder
        self.download = download
        self.flatten = flatten
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # ------------------------------------------------------------------ properties
    @property
    def folder(self) -> str:
        """Name of the data set's folder under ``data_dir`` (torchvision's class name)."""
        return self.dataset_class.__name__

    @property
    def raw_folder(self) -> Path:
        """Folder that must hold the raw IDX files."""
        return Path(self.data_dir) / self.folder / "raw"

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one input sample: ``(784,)`` or ``(1, 28, 28)``."""
        return (self.num_features,) if self.flatten else self.image_shape

    @property
    def num_features(self) -> int:
        """Number of input features (784)."""
        return math.prod(self.image_shape)

    # ------------------------------------------------------------------ data files
    def missing_files(self) -> list[str]:
        """Raw files torchvision needs that are not in :attr:`raw_folder`."""
        return [name for name in _RAW_FILES if not (self.raw_folder / name).is_file()]

    def _short_message(self, downloading: bool, missing: list[str] | None = None) -> str:
        """One line: what is missing where (a ``data_dir`` that is a file; some of the raw files,
        by name; or the whole data set), and the ways out."""
        point = f"Point --data.data_dir at a folder that holds {self.folder}/raw/ (the four IDX files)"
        if Path(self.data_dir).is_file():
            return f"--data.data_dir {Path(self.data_dir).resolve()} is a file, not a folder. {point}."
        missing = self.missing_files() if missing is None else missing
        if missing and len(missing) < len(_RAW_FILES):
            where = f"{self.raw_folder.resolve()} lacks {', '.join(missing)} of {self.folder}"
        else:
            where = f"{self.folder} is not in {self.raw_folder.resolve()}"
        if downloading:
            return f"{where} and downloading it failed (no internet access?). {point}, or rerun with internet access."
        return f"{where}. {point}, or add --data.download=true on a machine with internet access."

    def _missing_message(self, missing: list[str]) -> str:
        return (
            f"{self.folder} data not found: missing file(s) {', '.join(missing)} in "
            f"{self.raw_folder.resolve()}. Put the raw IDX files there (or point "
            f"`data_dir` / --data.data_dir at a folder containing {self.folder}/raw/), or pass "
            f"download=True (--data.download=true) on a machine with internet access."
        )

    def prepare_data(self) -> None:
        """Download the data set if asked to, else check that the raw files are present.

        Raises:
            DataNotFoundError: files missing and ``download=False``.
            DataDownloadError: ``download=True`` but the download failed (e.g. no network).
        """
        if not self.download or Path(self.data_dir).is_file():  # a file: nothing to download into
            self._check_files()
            return
        if not self.missing_files():
            return
        try:  # torchvision downloads all four files (train and test) at once
            self.dataset_class(root=self.data_dir, train=True, download=True)
        except Exception as err:  # torchvision raises RuntimeError / URLError / OSError
            missing = self.missing_files() or list(_RAW_FILES)
            raise DataDownloadError(
                f"Downloading {self.folder} failed ({type(err).__name__}: {err}). " + self._missing_message(missing),
                self._short_message(downloading=True, missing=missing),
            ) from err

    def _check_files(self) -> None:
        missing = self.missing_files()
        if missing:
            raise DataNotFoundError(self._missing_message(missing), self._short_message(downloading=False, missing=missing))

    # ------------------------------------------------------------------ data sets
    def transform(self) -> transforms.Compose:
        """``ToTensor`` (pixel/255) -> ``Normalize(mean, std)`` -> optional flatten."""
        steps: list[Any] = [transforms.ToTensor(), transforms.Normalize((self.mean,), (self.std,))]
        if self.flatten:
            steps.append(_Flatten())
        return transforms.Compose(steps)

    def _load(self, train: bool) -> Dataset:
        split = "train" if train else "t10k"
        files = f"{split}-images-idx3-ubyte and {split}-labels-idx1-ubyte in {self.raw_folder}"
        try:
            dataset = self.dataset_class(root=self.data_dir, train=train, download=False, transform=self.transform())
        except (RuntimeError, ValueError, IndexError, OSError) as error:
            raise ValueError(f"cannot read {files}: {error}. A file is truncated or corrupt: copy or download "
                             "it again (--data.download=true).") from error
        if len(dataset.data) != len(dataset.targets):
            raise ValueError(f"{files} do not match: {len(dataset.data)} images but {len(dataset.targets)} labels. "
                             "A file is truncated or from another data set: copy or download them again.")
        return self._in_memory(dataset)

    def _in_memory(self, dataset: Dataset) -> TensorDataset:
        """The images after :meth:`transform`, all at once: the same float32 operations as the
        per-image ``ToTensor`` and ``Normalize`` (identical values), without their per-sample cost
        (about a tenth of a fast DFC epoch on full MNIST). (N, 1, 28, 28), or (N, 784) flattened."""
        images = dataset.data.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std).unsqueeze(1)
        if self.flatten:
            images = images.flatten(1)
        return TensorDataset(images, torch.as_tensor(dataset.targets))

    def _finalise(self, dataset: Dataset, subset: int | None) -> Dataset:
        """Apply the optional first-N subset and the autoencoder target."""
        if subset is not None:
            dataset = Subset(dataset, range(min(subset, len(dataset))))  # type: ignore[arg-type]
        return _AutoencoderDataset(dataset) if self.autoencoder else dataset

    def split(self, dataset: Dataset) -> tuple[Dataset, Dataset]:
        """Seeded ``random_split`` of the training images into (n - val_size, val_size)."""
        n = len(dataset)  # type: ignore[arg-type]
        if self.val_size >= n:
            raise ValueError(
                f"`val_size`={self.val_size} must be smaller than the {n} training images in "
                f"{self.raw_folder}; pass a smaller --data.val_size (0 disables validation)."
            )
        generator = torch.Generator().manual_seed(self.split_seed)
        train, val = random_split(dataset, [n - self.val_size, self.val_size], generator=generator)
        return train, val

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val sets (fit/validate stages) and the test set (test/predict)."""
        self._check_files()
        if stage in (None, "fit", "validate") and self.train_set is None:
            train, val = self.split(self._load(train=True))
            self.train_set = self._finalise(train, self.train_subset)
            self.val_set = self._finalise(val, None)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._finalise(self._load(train=False), self.test_subset)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call `setup()` before requesting a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of ``batch_size``."""
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches of ``eval_batch_size``; ``[]`` when ``val_size=0``."""
        if self.val_size == 0:
            return []
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches of ``eval_batch_size``."""
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`."""
        return self.test_dataloader()


class MNISTDataModule(_TorchvisionImageDataModule):
    """MNIST digits, ``x = (pixel/255 - 0.1307) / 0.3081`` as in the DFC reference code.

    Raw files are read from ``<data_dir>/MNIST/raw/``. See
    :class:`_TorchvisionImageDataModule` for the arguments and batch shapes.
    """

    dataset_class = datasets.MNIST
    mean = 0.1307
    std = 0.3081


class FashionMNISTDataModule(_TorchvisionImageDataModule):
    """Fashion-MNIST, ``x = pixel/255`` (no centering, as in the DFC reference code).

    Raw files are read from ``<data_dir>/FashionMNIST/raw/``. See
    :class:`_TorchvisionImageDataModule` for the arguments and batch shapes.
    """

    dataset_class = datasets.FashionMNIST
    mean = 0.0
    std = 1.0


class StudentTeacherDataModule(LightningDataModule):
    """Synthetic student-teacher regression (DFC paper, Fig. 3).

    A random teacher MLP ``input_size -> teacher_hidden... -> output_size`` (hidden layers use
    ``teacher_activation``, the output is linear; weights xavier-normal with gain
    ``teacher_init_gain``, biases 0) maps inputs ``x ~ U(-1, 1)^input_size`` to targets.
    Everything is drawn from a local generator seeded with ``seed``; the global RNG is untouched.

    Args:
        input_size: number of input features.
        output_size: number of regression targets.
        teacher_hidden: widths of the teacher's hidden layers.
        teacher_activation: ``relu``, ``tanh``, ``leaky_relu``, ``sigmoid`` or ``linear``.
        teacher_init_gain: gain of the teacher's xavier-normal weight init.
        num_train: number of training samples.
        num_val: number of validation samples (0 = no validation).
        num_test: number of test samples.
        batch_size: batch size of all loaders.
        seed: seed of the teacher and of the inputs.

    Batches are ``(x, y)``: float32 ``[B, input_size]`` and ``[B, output_size]``.
    """

    def __init__(
        self,
        input_size: int = 15,
        output_size: int = 5,
        teacher_hidden: list[int] = [1000, 1000, 1000, 1000],  # noqa: B006 (shown by the CLI)
        teacher_activation: str = "relu",
        teacher_init_gain: float = 3.0,
        num_train: int = 5000,
        num_val: int = 1000,
        num_test: int = 1000,
        batch_size: int = 128,
        seed: int = 42,
    ) -> None:
        super().__init__()
        _check_int("input_size", input_size)
        _check_int("output_size", output_size)
        if not isinstance(teacher_hidden, (list, tuple)) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in teacher_hidden
        ):
            raise ValueError(
                f"`teacher_hidden` must be a list of positive layer widths, got {teacher_hidden!r};"
                " pass e.g. --data.teacher_hidden='[1000, 1000]'"
            )
        self.activation = Activation(teacher_activation)
        if not teacher_init_gain > 0:
            raise ValueError(f"`teacher_init_gain` must be > 0, got {teacher_init_gain!r}")
        _check_int("num_train", num_train)
        _check_int("num_val", num_val, minimum=0)
        _check_int("num_test", num_test)
        _check_int("batch_size", batch_size)
        _check_int("seed", seed, minimum=None)
        self.save_hyperparameters()
        self.input_size = input_size
        self.output_size = output_size
        self.teacher_hidden = list(teacher_hidden)
        self.teacher_init_gain = float(teacher_init_gain)
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    @property
    def num_features(self) -> int:
        """Number of input features."""
        return self.input_size

    @property
    def num_outputs(self) -> int:
        """Number of regression targets."""
        return self.output_size

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return (self.input_size,)

    def make_teacher(self, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        """Teacher layers ``(W [out, in], b [out])``: float64, xavier-normal W, zero b."""
        sizes = [self.input_size, *self.teacher_hidden, self.output_size]
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            std = self.teacher_init_gain * math.sqrt(2.0 / (fan_in + fan_out))
            weight = torch.randn(fan_out, fan_in, generator=generator, dtype=torch.float64) * std
            layers.append((weight, torch.zeros(fan_out, dtype=torch.float64)))
        return layers

    def teacher(self, layers: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
        """Teacher forward pass: ``x [N, input_size] -> [N, output_size]``."""
        for i, (weight, bias) in enumerate(layers):
            x = x @ weight.T + bias
            if i < len(layers) - 1:
                x = self.activation(x)
        return x

    def generate(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        """Draw the teacher and the train/val/test sets (float32) from ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        layers = self.make_teacher(generator)
        sets = []
        for n in (self.num_train, self.num_val, self.num_test):
            x = torch.rand(n, self.input_size, generator=generator, dtype=torch.float64) * 2 - 1
            sets.append(TensorDataset(x.float(), self.teacher(layers, x).float()))
        return sets[0], sets[1], sets[2]

    def setup(self, stage: str | None = None) -> None:
        """Generate the data (once)."""
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.generate()

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call `setup()` before requesting a dataloader")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches; ``[]`` when ``num_val=0``."""
        return self._loader(self.val_set, shuffle=False) if self.num_val else []

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`."""
        return self.test_dataloader()
