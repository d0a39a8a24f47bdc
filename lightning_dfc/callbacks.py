"""Lightning callbacks: pictures of what the network does."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

__all__ = ["ReconstructionGrid"]


class ReconstructionGrid(Callback):
    """Inputs above their reconstructions, as an image grid, at the end of validation.

    For autoencoders (targets = inputs). The grid is saved as
    ``<log_dir>/reconstructions/epoch=<N>.png`` and, with a TensorBoard logger, logged as an image.

    Args:
        num_images: how many validation images (taken from the first validation batch).
        image_shape: (channels, height, width) of one image (flattened inputs are reshaped).
        every_n_epochs: how often.
    """

    def __init__(self, num_images: int = 8, image_shape: tuple[int, int, int] = (1, 28, 28), every_n_epochs: int = 1):
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("ReconstructionGrid: num_images and every_n_epochs must be >= 1")
        self.num_images = num_images
        self.image_shape = tuple(image_shape)
        self.every_n_epochs = every_n_epochs
        self._inputs: Tensor | None = None
        self.last_path: Path | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int, dataloader_idx: int = 0):
        if batch_idx == 0 and dataloader_idx == 0:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._inputs = x[: self.num_images].detach()

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._inputs is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        from torchvision.utils import make_grid, save_image

        with torch.no_grad():
            recon = pl_module(self._inputs.to(pl_module.device))
        images = torch.cat([self._inputs.cpu(), recon.detach().cpu()]).float()
        if images[0].numel() != math.prod(self.image_shape):
            raise ValueError(
                f"ReconstructionGrid: an input has {images[0].numel()} values, which does not fit "
                f"image_shape={self.image_shape}; set image_shape"
            )
        images = images.reshape(-1, *self.image_shape)
        low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
        high = images.flatten(1).amax(1).view(-1, 1, 1, 1)
        images = (images - low) / (high - low).clamp_min(1e-12)  # each image to [0, 1]
        grid = make_grid(images, nrow=len(self._inputs), padding=2)
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "reconstructions"
        folder.mkdir(parents=True, exist_ok=True)
        self.last_path = folder / f"epoch={trainer.current_epoch:03d}.png"
        save_image(grid, self.last_path)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("reconstructions", grid, trainer.global_step)
