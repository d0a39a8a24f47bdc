"""Callbacks: the autoencoder reconstruction grid."""

import lightning.pytorch as pl
import pytest
from helpers import write_fake_mnist
from lightning.pytorch.loggers import CSVLogger
from torchvision.io import decode_image

from lightning_dfc import MLP, DFCModule
from lightning_dfc.shell.callbacks import ReconstructionGrid
from lightning_dfc.shell.data import MNISTDataModule


def test_reconstruction_grid_is_saved_as_an_image(tmp_path):
    write_fake_mnist(tmp_path, 32, 8)
    model = DFCModule(MLP([784, 16, 784]), variant="bp", loss="mse", target_stepsize=0.001)
    grid = ReconstructionGrid(num_images=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=[grid],
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(model, MNISTDataModule(str(tmp_path), batch_size=8, val_size=8, autoencoder=True))
    assert grid.last_path is not None and grid.last_path.exists()
    image = decode_image(str(grid.last_path))
    # 2 rows (inputs, reconstructions) x 4 columns of 28x28 images with 2-pixel padding
    assert image.shape[-2:] == (2 + 2 * 30, 2 + 4 * 30)
    assert image.float().std() > 0  # not blank


def test_reconstruction_grid_rejects_wrong_image_shape(tmp_path):
    write_fake_mnist(tmp_path, 32, 8)
    model = DFCModule(MLP([784, 16, 784]), variant="bp", loss="mse", target_stepsize=0.001)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         callbacks=[ReconstructionGrid(image_shape=(1, 10, 10))], enable_progress_bar=False,
                         num_sanity_val_steps=0)
    with pytest.raises(ValueError, match="image_shape"):
        trainer.fit(model, MNISTDataModule(str(tmp_path), batch_size=8, val_size=8, autoencoder=True))
