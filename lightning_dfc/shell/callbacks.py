"""Lightning callbacks: the theory's diagnostics over training, and reconstruction images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor

from .distributed import sync_tensors

__all__ = ["ConditionMonitor", "ReconstructionGrid", "PredictionWriter", "MONITOR_METRICS"]

MONITOR_METRICS = (
    "condition_1",  # spread of the layer-input norms (std / mean)
    "condition_2",  # ||P_J Q|| / ||Q||
    "condition_3",  # alpha - max Re eig(-J Q): margin and fraction of samples with margin > 0
    "stability",  # max Re eig of the linearised network + PI controller (Fig. 3E)
    "bp",  # angle between the applied update and the BP gradient
    "gn",  # ... and the damped Gauss-Newton update
    "mn",  # ... and the damped minimum-norm update
    "ssa",  # ... and the DFC-SSA update
    "feedback",  # angles between Q and J^T, and Q and the damped pseudo-inverse of J
    "h",  # angle with dH/dW (H = ||Qbar u_ss||^2, Strong-DFC's control loss), H and Condition 2 at u_ss
)
WAKE_ONLY = ("bp", "gn", "mn", "ssa", "h")
DEFAULT_METRICS = tuple(m for m in MONITOR_METRICS if m != "h")  # "h" solves a steady state: opt in


class ConditionMonitor(Callback):
    """Logs Conditions 1-3, stability and update alignments of a DFC module over training.

    Measured on the batch and the weights that a step's update came from (the module records
    them on request), without touching the model: no autograd side effects, no state changes.
    Values are torchmetrics means, exact under DDP (summed over ranks). Logged names are
    ``diag/<metric>`` (``diag/angle_<ref>`` for alignments, with ``/layer_<i>`` per layer,
    ``diag/condition_3_margin``, ``diag/condition_3_fraction``, ``diag/angle_q_jt``,
    ``diag/angle_q_pinv``), with a ``<phase>/`` infix for sleep-phase measurements
    (``diag/sleep/condition_2``).

    Args:
        metrics: any of :data:`MONITOR_METRICS` (update alignments only in wake epochs).
        every_n_steps: also measure after every n-th batch of a monitored epoch (``None``: off).
        at_epoch_end: measure on the epoch's last batch at the end of every monitored epoch.
        phases: ``wake`` and/or ``sleep`` (pre-training epochs count as sleep).
        damping: damping of the GN and MN updates and of the pseudo-inverse of J (the
            reference's ``gn_damping``; 0.1 in the toy experiments).
        max_samples: Jacobian-based conditions and stability use at most this many samples of
            the batch (the alignments always use the whole batch, as the update did).
        per_layer: also log per-layer alignment angles.

    Cost (per measurement, MNIST sizes, float64): Jacobians O(B n_L S); GN/MN O(B n_L S) more;
    stability an eigendecomposition of size S + n_L per sample (the dominant cost: keep
    ``max_samples`` small or leave ``stability`` out).
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        every_n_steps: int | None = None,
        at_epoch_end: bool = True,
        phases: Sequence[str] = ("wake", "sleep"),
        damping: float = 0.1,
        max_samples: int | None = 32,
        per_layer: bool = True,
    ) -> None:
        unknown = set(metrics) - set(MONITOR_METRICS)
        if unknown:
            raise ValueError(f"ConditionMonitor: unknown metrics {sorted(unknown)}; choose from {MONITOR_METRICS}")
        if not set(phases) <= {"wake", "sleep"}:
            raise ValueError(f"ConditionMonitor: phases must be 'wake' and/or 'sleep', got {list(phases)}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("ConditionMonitor: every_n_steps must be >= 1 or None")
        if damping < 0:
            raise ValueError("ConditionMonitor: damping must be >= 0")
        self.metrics = tuple(metrics)
        self.every_n_steps = every_n_steps
        self.at_epoch_end = at_epoch_end
        self.phases = tuple(phases)
        self.damping = damping
        self.max_samples = max_samples
        self.per_layer = per_layer
        self._meters: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from .metrics import AlignmentAngle, Condition1, Condition2, Condition3Margin, Stability
        from .mixin import DFCMixin

        if not isinstance(pl_module, DFCMixin):
            raise ValueError("ConditionMonitor needs a DFC module (DFCModule or a DFCMixin model)")
        pl_module.dfc_record_steps = True
        dyn = pl_module.dfc_dynamics
        if not pl_module.dfc_method.simulates:
            # no controller: its stability, Condition 3 and the SSA reference are meaningless
            dropped = [m for m in self.metrics if m in ("condition_3", "stability", "ssa", "h")]
            if dropped:
                rank_zero_warn(f"ConditionMonitor: {dropped} skipped for variant {pl_module.dfc_variant!r} (no controller)")
            self.metrics = tuple(m for m in self.metrics if m not in dropped)
        meters: dict[str, Any] = {}
        for phase in self.phases:
            tag = "" if phase == "wake" else "sleep/"
            if "condition_1" in self.metrics:
                meters[f"{tag}condition_1"] = Condition1()
            if "condition_2" in self.metrics:
                meters[f"{tag}condition_2"] = Condition2()
            if "condition_3" in self.metrics:
                meters[f"{tag}condition_3"] = Condition3Margin(dyn.alpha)
            if "stability" in self.metrics:
                meters[f"{tag}stability"] = Stability.from_config(dyn)
            if "feedback" in self.metrics:
                meters[f"{tag}angle_q_jt"] = AlignmentAngle()
                meters[f"{tag}angle_q_pinv"] = AlignmentAngle()
        if "wake" in self.phases and "h" in self.metrics:
            meters["control_loss"] = MeanMetric()
            meters["condition_2_ss"] = MeanMetric()
        if "wake" in self.phases:
            for ref in (m for m in self.metrics if m in WAKE_ONLY):
                meters[f"angle_{ref}"] = AlignmentAngle()
                if self.per_layer:
                    for i in range(pl_module.dfc_net.num_layers):
                        meters[f"angle_{ref}/layer_{i + 1}"] = AlignmentAngle()
        self._meters = {k: m.to(pl_module.device) for k, m in meters.items()}

    # ------------------------------------------------------------------ hooks
    def _phase(self, pl_module) -> str:
        return "wake" if pl_module.dfc_phase.phase.value == "wake" else "sleep"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        phase = self._phase(pl_module)
        if self.every_n_steps and phase in self.phases and (batch_idx + 1) % self.every_n_steps == 0:
            self._measure_and_log(pl_module, phase, on_step=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        phase = self._phase(pl_module)
        if self.at_epoch_end and phase in self.phases:
            self._measure_and_log(pl_module, phase, on_step=False)

    # ------------------------------------------------------------------ measuring
    @torch.no_grad()
    def _measure_and_log(self, pl_module, phase: str, on_step: bool) -> None:
        if phase == "wake":
            record = pl_module.dfc_last_wake
            if record is None:
                return
            x, params = record.x, record.params
        else:
            x = pl_module.dfc_last_sleep_input
            if x is None:
                return
            params = pl_module.dfc_net.params()
        self._update_conditions(params, x, "" if phase == "wake" else "sleep/")
        if phase == "wake":
            self._update_alignments(pl_module, record)
        prefix = "" if phase == "wake" else "sleep/"
        for name, meter in self._meters.items():
            if name.startswith("sleep/") != (prefix == "sleep/"):
                continue
            value = meter.compute()  # synchronises across ranks
            meter.reset()
            values = value if isinstance(value, dict) else {"": value}
            for suffix, v in values.items():
                key = f"diag/{name}" + (f"_{suffix}" if suffix else "")
                pl_module.log(key, v.float(), on_step=on_step, on_epoch=not on_step, sync_dist=False)

    def _update_conditions(self, params, x: Tensor, tag: str) -> None:
        from ..core import diagnostics as D
        from ..core.dynamics import feedforward

        xs = x if self.max_samples is None else x[: self.max_samples]
        ff = feedforward(params, xs)
        jac = D.jacobian_at(params, v=ff.v)
        m = self._meters
        if f"{tag}condition_1" in m:
            m[f"{tag}condition_1"].update(xs, ff)
        if f"{tag}condition_2" in m:
            m[f"{tag}condition_2"].update(params, jacobian=jac)
        if f"{tag}condition_3" in m:
            m[f"{tag}condition_3"].update(params, jacobian=jac)
        if f"{tag}stability" in m:
            m[f"{tag}stability"].update(params, v=ff.v)
        if f"{tag}angle_q_jt" in m:
            fa = D.feedback_alignment(jac, torch.cat(params.feedback), self.damping, reduction="none")
            m[f"{tag}angle_q_jt"].update(fa.transpose)
            m[f"{tag}angle_q_pinv"].update(fa.pseudoinverse)

    def _update_alignments(self, pl_module, record) -> None:
        from ..core import diagnostics as D
        from ..core.dynamics import feedforward
        from ..core.rules import bp_update, dfc_ssa_update
        from ..core.targets import NudgedTarget

        refs = [m for m in self.metrics if m in WAKE_ONLY]
        if not refs:
            return
        params, x, y, loss = record.params, record.x, record.y, pl_module.dfc_loss
        references = {}
        if "bp" in refs:
            references["bp"] = bp_update(params, x, y, loss).tensors()
        if "gn" in refs:
            references["gn"] = D.damped_gauss_newton_update(params, x, y, loss, self.damping)
        if "mn" in refs:
            references["mn"] = D.damped_minimum_norm_update(params, x, y, loss, self.damping)
        if "ssa" in refs:
            ff = feedforward(params, x)
            lam = pl_module.dfc_rank_stepsize(pl_module.trainer.world_size)
            ssa = dfc_ssa_update(params, x, ff, None, pl_module.dfc_dynamics.alpha,
                                 pl_module.dfc_updates.learning_rule,
                                 delta=NudgedTarget(pl_module.dfc_updates.target_loss).control(ff.r[-1], y, loss,
                                                                                                lam).delta).tensors()
            clip = pl_module.dfc_updates.clip_norm
            if clip is not None:  # clipped like a real update, as the reference does
                ssa = [t * min(1.0, clip / max(float(t.norm()), 1e-300)) for t in ssa]
            references["ssa"] = ssa
        if "h" in refs:
            references["h"] = self._control_loss_reference(pl_module, params, x, y, loss)
        strategy = pl_module.trainer.strategy
        for ref, tensors in references.items():
            # the applied update is the mean over ranks: so must the reference be
            tensors = [t.clone() for t in tensors]
            sync_tensors(strategy, tensors)
            angles = D.alignment_angles(record.update, tensors)
            self._meters[f"angle_{ref}"].update(angles.network.reshape(1))
            if self.per_layer:
                for i, a in enumerate(angles.layers):
                    self._meters[f"angle_{ref}/layer_{i + 1}"].update(a.reshape(1))


    def _control_loss_reference(self, pl_module, params, x: Tensor, y: Tensor, loss: str) -> list[Tensor]:
        """dH/dW at the controlled steady state of the batch (the target the module uses), and
        H and Condition 2 there into their meters."""
        from ..core import control_loss as C
        from ..core.dynamics import feedforward

        out = feedforward(params, x).r[-1]
        lam = pl_module.dfc_rank_stepsize(pl_module.trainer.world_size)
        target, error = pl_module.dfc_target().output_target(out, y, loss, lam)
        alpha = pl_module.dfc_dynamics.alpha
        steady = C.controlled_steady_state(params, x, target, alpha, error)
        self._meters["control_loss"].update(C.control_loss(params, steady.u, reduction="mean"))
        self._meters["condition_2_ss"].update(C.condition_2_at_steady_state(params, steady.v).mean())
        return C.control_loss_gradient(params, x, steady, alpha, error).tensors()


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


class PredictionWriter(BasePredictionWriter):
    """Write ``lightning-dfc predict``'s outputs to ``<output_dir>/predictions.pt``.

    The file holds ``{"outputs": (N, n_L) tensor, "labels": (N,) argmax class (classification
    outputs only)}`` in the order of the predict data loader (with DDP, one file per rank:
    ``predictions_rank<k>.pt``, with the data set indices in ``"indices"``).

    Args:
        output_dir: folder to write into (created if needed).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not predictions:
            return
        batches = predictions[0] if isinstance(predictions[0], list) else predictions
        outputs = torch.cat([b.detach().cpu() for b in batches])
        record: dict[str, Any] = {"outputs": outputs}
        if outputs.ndim == 2 and getattr(pl_module, "dfc_loss", None) == "cross_entropy":
            record["labels"] = outputs.argmax(1)
        name = "predictions.pt"
        if trainer.world_size > 1:
            indices = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) else batch_indices
            record["indices"] = torch.tensor([i for batch in indices for i in batch])
            name = f"predictions_rank{trainer.global_rank}.pt"
        path = Path(self.output_dir)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(record, path / name)
        rank_zero_info(f"lightning-dfc: {len(outputs)} predictions written to {path / name}")
