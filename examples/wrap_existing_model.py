"""Train an *existing* LightningModule with DFC instead of backprop, in a few lines.

``LitClassifier`` stands for a model you already have: its own network attribute, validation and
test steps, metrics and logging. ``DFCLitClassifier`` mixes in :class:`lightning_dfc.DFCMixin`,
which replaces only ``training_step`` and ``configure_optimizers``. After training,
``model.model`` is the trained ``nn.Sequential`` and ``LitClassifier`` works exactly as before.

    python examples/wrap_existing_model.py --data-dir ../shared/data --epochs 1
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_dfc import DFCMixin, FeedbackConfig, SimulationConfig
from lightning_dfc.shell.data import MNISTDataModule


class LitClassifier(pl.LightningModule):
    """A user's ordinary backprop classifier."""

    def __init__(self, hidden: int = 256, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.Tanh(), nn.Linear(hidden, 10))
        self.val_accuracy = MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_accuracy(self(x), y)
        self.log("my_val_accuracy", self.val_accuracy, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class DFCLitClassifier(DFCMixin, LitClassifier):
    """The same model, trained with Deep Feedback Control."""


def build(hidden: int = 256, steps: int = 1000) -> DFCLitClassifier:
    return DFCLitClassifier(
        hidden=hidden,  # the user's own arguments pass through
        dfc_network_attribute="model",
        dfc_variant="dfc",
        dfc_target_stepsize=0.07794,
        dfc_dynamics=SimulationConfig(steps=steps, alpha=1.389e-3),
        # a quick demo: at most 1 pre-training epoch. Leave dfc_feedback out for the default, which
        # pre-trains until the feedback weights are aligned (docs/user_guide.md, "Defaults").
        dfc_feedback=FeedbackConfig(pretrain_epochs=1),
    )


def main(argv: list[str] | None = None) -> DFCLitClassifier:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=1, help="forward-weight epochs")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000, help="simulation time points T")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--val-size", type=int, default=500)
    args = parser.parse_args(argv)
    pl.seed_everything(42)
    model = build(args.hidden, args.steps)
    data = MNISTDataModule(args.data_dir, val_size=args.val_size, train_subset=args.train_subset)
    pl.Trainer(max_epochs=args.epochs, precision="64-true", accelerator="cpu").fit(model, data)
    return model


if __name__ == "__main__":
    main()
