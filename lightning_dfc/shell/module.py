"""``DFCModule``: a LightningModule that trains a user's MLP with DFC (or a baseline)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..core.config import SimulationConfig
from .mixin import DFCMixin
from ..core.losses import loss_value
from ..core.config import TARGET_STEPSIZE, FeedbackConfig, UpdateConfig, plain
from ..core.numerics import Numerics

__all__ = ["DFCModule"]


class DFCModule(DFCMixin, LightningModule):
    """Train ``network`` with Deep Feedback Control, one of its variants, DFA or BP.

    Args:
        network: an ``nn.Sequential`` (or list) of ``nn.Linear`` layers each followed by an
            elementwise activation, e.g. :class:`lightning_dfc.MLP`. Its parameters are trained
            in place: afterwards it is an ordinary feedforward module.
        variant: ``dfc``, ``dfc_ss``, ``dfc_ssa`` (trained feedback), ``dfc_fixed``,
            ``dfc_ss_fixed``, ``dfc_ssa_fixed`` (feedback fixed at W_{i+1}^T...W_L^T), ``dfa``, ``bp``.
        loss: ``cross_entropy`` (softmax absorbed, linear output layer, integer labels) or
            ``mse`` (regression and autoencoders; targets shaped like the output).
        target_stepsize: lambda of the output target r_L* = r_L^- - lambda dL/dr_L (batch-mean
            loss). Also divides the forward learning rate when ``updates.normalize_lr``.
        dynamics: the wake-phase simulation (controller and network time constants, dt, T, ...).
        feedback: sleep phase and schedule (pre-training, sleep epochs per wake epoch, scaling).
        updates: learning rule, clipping, learning-rate normalisation, convergence handling.
        forward_optimizer: optimizer of the forward weights (default Adam, lr 9.266e-5 and eps
            9.446e-8 as the paper's MNIST DFC run, torch's betas 0.9/0.999 where the paper has
            0.99/0.99: see docs/user_guide.md, "Defaults").
        feedback_optimizer: optimizer of the feedback weights in sleep epochs (default Adam,
            betas 0.99/0.99, lr 5.265e-4, eps 1.561e-6).
        pretrain_optimizer: optimizer of the feedback weights during pre-training (default
            Adam, lr 3.170e-4, eps 1.561e-6).
        numerics: how the simulations are computed (:mod:`~lightning_dfc.core.numerics`):
            ``fast`` (default: float32, an early stop with the rest of a settled simulation in
            closed form, two-point noise) or ``exact`` (the published numerics: float64, every
            Euler step, Gaussian noise; equal to the authors' code draw for draw). Levers set in
            ``dynamics`` or ``feedback.simulation`` override the preset's.
        resume_with_changes: a fit resumed from a checkpoint (``--ckpt_path``) may change the
            checkpoint's DFC settings (variant, loss, lambda, numerics, dynamics, feedback, updates,
            network), each named on the console as ``old -> new``. Off (default): a change is
            refused, one line per setting. (``feedback.resume_with_new_schedule`` allows a new
            schedule only.)

    Dataclass arguments also accept dicts of their fields, and optimizers a
    ``{"class_path": ..., "init_args": ...}`` dict: that is how they are stored in checkpoints.
    Outside LightningCLI the network is not stored in the hyperparameters; pass it again to
    ``DFCModule.load_from_checkpoint(path, network=...)``. Under the CLI the config rebuilds it.

    Logged: ``train_loss``/``train_acc`` (wake epochs), ``val_*`` and ``test_*`` loss/accuracy,
    ``phase`` (0 pretrain, 1 sleep, 2 wake), ``dfc/*`` simulation statistics, ``sleep/*``.
    """

    def __init__(
        self,
        network: nn.Module,
        variant: str = "dfc",
        loss: str = "cross_entropy",
        target_stepsize: float = TARGET_STEPSIZE,
        dynamics: SimulationConfig | None = None,
        feedback: FeedbackConfig | None = None,
        updates: UpdateConfig | None = None,
        forward_optimizer: OptimizerCallable | None = None,
        feedback_optimizer: OptimizerCallable | None = None,
        pretrain_optimizer: OptimizerCallable | None = None,
        numerics: str | Numerics = "fast",
        resume_with_changes: bool = False,
    ) -> None:
        super().__init__(
            dfc_network=network,
            dfc_network_attribute="network",
            dfc_variant=variant,
            dfc_loss=loss,
            dfc_target_stepsize=target_stepsize,
            dfc_dynamics=dynamics,
            dfc_feedback=feedback,
            dfc_updates=updates,
            dfc_forward_optimizer=forward_optimizer,
            dfc_feedback_optimizer=feedback_optimizer,
            dfc_pretrain_optimizer=pretrain_optimizer,
            dfc_numerics=numerics,
            dfc_resume_with_changes=resume_with_changes,
        )
        if _given_hyperparameters.get() is None:
            # Plain Python: the network module is not a hyperparameter (pass it again to
            # load_from_checkpoint); the rest is stored checkpoint-safe (weights_only=True).
            self.save_hyperparameters(ignore=["network"])
            for key, value in self.hparams.items():
                self.hparams[key] = plain(value)
        else:
            # LightningCLI: the hparams are the parsed config, network included.
            self.save_hyperparameters()
        classify = loss == "cross_entropy"
        n_out = self.dfc_net.sizes[-1]
        for stage in ("val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_acc", MulticlassAccuracy(n_out, average="micro") if classify else None)

    def forward(self, x: Tensor) -> Tensor:
        """The network's plain feedforward pass (logits for classification)."""
        return self.network(x)

    def _evaluate(self, batch: Any, stage: str, batch_idx: int = 0) -> None:
        x, y = self.dfc_unpack_batch(batch)
        try:  # the training step's input checks: NaN inputs, labels out of range, shapes
            self._dfc_checked_input(x, y, batch_idx)
        except ValueError as error:
            name = {"val": "validation", "test": "test"}[stage]
            raise ValueError(f"{name} data: {error}") from None
        output = self.network(x)
        loss_metric = getattr(self, f"{stage}_loss")
        loss_metric(loss_value(output, y, self.dfc_loss))
        self.log(f"{stage}_loss", loss_metric, on_epoch=True, prog_bar=stage == "val")
        acc = getattr(self, f"{stage}_acc")
        if acc is not None:
            acc(output, y)
            self.log(f"{stage}_acc", acc, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.network(x)
