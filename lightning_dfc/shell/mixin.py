"""DFC training for any LightningModule whose network is a stack of ``nn.Linear`` + activations.

:class:`DFCMixin` replaces ``training_step`` and ``configure_optimizers`` with DFC's wake/sleep
training (manual optimization, updates written to ``.grad``, averaged across ranks) and keeps
everything else of the host module: its validation/test steps, metrics, logging and data hooks.

    class DFCLitClassifier(DFCMixin, LitClassifier):
        pass

    model = DFCLitClassifier(hidden=256, dfc_variant="dfc", dfc_network_attribute="model")
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..core.config import SimulationConfig
from .distributed import check_precision, check_strategy, sync_tensors, sync_updates
from ..core.dynamics import feedforward
from ..core.network import DFCNetwork, LayerParams
from ..core.rules import LOSSES, ConvergenceCriterion, FeedbackRule, Update, loss_value
from ..core.schedule import Phase, PhaseInfo, PhaseSchedule
from ..core.config import FeedbackConfig, UpdateConfig, as_config, as_optimizer
from ..core.methods import UpdateSettings, resolve_method

__all__ = ["DFCMixin", "WakeRecord", "default_optimizer"]

ADAM_BETAS = (0.99, 0.99)


def default_optimizer(lr: float, eps: float) -> OptimizerCallable:
    """Adam with the paper's betas (0.99, 0.99)."""
    return functools.partial(torch.optim.Adam, lr=lr, betas=ADAM_BETAS, eps=eps)


@dataclass
class WakeRecord:
    """What a wake step saw and did, for diagnostics (recorded only on request).

    Attributes:
        x: flattened input (B, n_0); y: targets.
        params: the network's tensors *before* the step (cloned).
        update: the update written to ``.grad`` after syncing and clipping, W_1, b_1, ...
        stats: simulation statistics of the step.
    """

    x: Tensor
    y: Tensor
    params: LayerParams
    update: list[Tensor]
    stats: dict[str, float]


class DivergenceError(RuntimeError):
    """Raised after too many consecutive batches with diverging dynamics."""


class DFCMixin:
    """Adds DFC training to a LightningModule (put it first in the bases).

    Keyword args (all prefixed ``dfc_`` so that they never collide with the host's own):
        dfc_network: the network, if the host module does not create it itself; it is stored
            as attribute ``dfc_network_attribute``.
        dfc_network_attribute: name of the attribute holding the network (an ``nn.Sequential``
            of ``nn.Linear`` + elementwise activations, or a list of such modules).
        dfc_variant, dfc_loss, dfc_target_stepsize, dfc_dynamics, dfc_feedback, dfc_updates,
        dfc_forward_optimizer, dfc_feedback_optimizer, dfc_pretrain_optimizer: as the arguments
            of :class:`~lightning_dfc.DFCModule` without the prefix.

    Everything else is passed on to the host module's ``__init__``.
    """

    def __init__(
        self,
        *args: Any,
        dfc_network: nn.Module | None = None,
        dfc_network_attribute: str = "network",
        dfc_variant: str = "dfc",
        dfc_loss: str = "cross_entropy",
        dfc_target_stepsize: float = 0.07794,
        dfc_dynamics: SimulationConfig | None = None,
        dfc_feedback: FeedbackConfig | None = None,
        dfc_updates: UpdateConfig | None = None,
        dfc_forward_optimizer: OptimizerCallable | None = None,
        dfc_feedback_optimizer: OptimizerCallable | None = None,
        dfc_pretrain_optimizer: OptimizerCallable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if dfc_network is not None:
            setattr(self, dfc_network_attribute, dfc_network)
        network = getattr(self, dfc_network_attribute, None)
        if network is None:
            raise ValueError(
                f"DFCMixin: the module has no attribute {dfc_network_attribute!r}; pass "
                "dfc_network_attribute=<name of the attribute that holds your nn.Sequential>"
            )
        self.configure_dfc(
            network,
            variant=dfc_variant,
            loss=dfc_loss,
            target_stepsize=dfc_target_stepsize,
            dynamics=dfc_dynamics,
            feedback=dfc_feedback,
            updates=dfc_updates,
            forward_optimizer=dfc_forward_optimizer,
            feedback_optimizer=dfc_feedback_optimizer,
            pretrain_optimizer=dfc_pretrain_optimizer,
        )

    # ------------------------------------------------------------------ configuration
    def configure_dfc(
        self,
        network: nn.Module,
        *,
        variant: str = "dfc",
        loss: str = "cross_entropy",
        target_stepsize: float = 0.07794,
        dynamics: SimulationConfig | None = None,
        feedback: FeedbackConfig | None = None,
        updates: UpdateConfig | None = None,
        forward_optimizer: OptimizerCallable | None = None,
        feedback_optimizer: OptimizerCallable | None = None,
        pretrain_optimizer: OptimizerCallable | None = None,
    ) -> None:
        """Validate the settings and wrap ``network`` (already an attribute of this module)."""
        method = resolve_method(variant)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if not (isinstance(target_stepsize, (int, float)) and target_stepsize > 0):
            raise ValueError(f"target_stepsize (lambda) must be positive, got {target_stepsize!r}")
        self.automatic_optimization = False
        self.dfc_variant = method.name or str(variant)
        self.dfc_method = method
        self.dfc_loss = loss
        self.dfc_target_stepsize = float(target_stepsize)
        self.dfc_dynamics = as_config(dynamics, SimulationConfig) or SimulationConfig()
        self.dfc_feedback_config = as_config(feedback, FeedbackConfig) or FeedbackConfig()
        self.dfc_updates = as_config(updates, UpdateConfig) or UpdateConfig()
        self.dfc_schedule: PhaseSchedule = self.dfc_feedback_config.schedule(method.train_feedback)
        method.validate(self.dfc_dynamics, self.dfc_feedback_config, self.dfc_updates)
        net = DFCNetwork(
            network,
            feedback_init=method.feedback_init or "xavier_normal",
            freeze_output_feedback=self.dfc_feedback_config.freeze_output,
        )
        if loss == "cross_entropy" and net.activations[-1].name != "linear":
            raise ValueError(
                "cross_entropy absorbs the softmax into the loss: the network's output layer must "
                f"be linear, but it ends with {net.activations[-1].name}. Remove the output "
                "activation or use loss='mse'."
            )
        # The wrapper is not registered as a submodule: the host already owns the network's
        # parameters; only the feedback weights are registered here (state_dict, .to(), DDP).
        object.__setattr__(self, "dfc_net", net)
        self.dfc_feedback_weights = net.feedback
        self.dfc_criterion = ConvergenceCriterion(
            self.dfc_updates.convergence_threshold,
            self.dfc_updates.convergence_epsilon,
            self.dfc_updates.exclude_non_converged,
        )
        self._dfc_optimizers = {
            "forward": as_optimizer(forward_optimizer) or default_optimizer(9.266e-5, 9.446e-8),
            "feedback": as_optimizer(feedback_optimizer) or default_optimizer(5.265e-4, 1.561e-6),
            "pretrain": as_optimizer(pretrain_optimizer) or default_optimizer(3.170e-4, 1.561e-6),
        }
        self.dfc_train_loss = MeanMetric()
        self.dfc_train_acc = (
            MulticlassAccuracy(num_classes=net.sizes[-1], average="micro") if loss == "cross_entropy" else None
        )
        self._dfc_diverged_in_a_row = 0
        self._dfc_forward_epochs: int | None = None
        self._dfc_translated_loop: Any = None
        self._dfc_generator: torch.Generator | None = None
        self._dfc_resume_epoch: int | None = None
        self.dfc_record_steps = False  # set by diagnostics callbacks: keep the last wake/sleep step
        self.dfc_last_wake: WakeRecord | None = None
        self.dfc_last_sleep_input: Tensor | None = None

    @property
    def dfc_spec(self):
        """The method object (``dfc_method``; the name of the variant spec it replaced)."""
        return self.dfc_method

    @property
    def dfc_normalize_lr(self) -> bool:
        """Whether the forward learning rate is divided by the target stepsize (see UpdateConfig)."""
        value = self.dfc_updates.normalize_lr
        return self.dfc_method.default_normalize_lr if value is None else bool(value)

    def _dfc_feedback_rule(self, pretraining: bool = False) -> FeedbackRule:
        """The feedback rule of single-phase learning (wake) or of a sleep/pre-training epoch."""
        return self.dfc_method.feedback_rule(self.dfc_feedback_config, self.dfc_dynamics, pretraining)

    @property
    def dfc_forward_clip_grouping(self) -> str:
        """``tensor`` or ``layer`` (see :class:`UpdateConfig`)."""
        value = self.dfc_updates.clip_grouping
        return value if value is not None else self.dfc_method.default_forward_clip_grouping

    @property
    def dfc_feedback_clip_grouping(self) -> str:
        """``all`` or ``layer`` (see :class:`FeedbackConfig`)."""
        value = self.dfc_feedback_config.clip_grouping
        return value if value is not None else self.dfc_method.default_feedback_clip_grouping

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[forward] or [forward, feedback, pretrain] (trained-feedback variants).

        The forward learning rate is divided by the target stepsize when ``normalize_lr``; the
        feedback optimizers get ``feedback.weight_decay`` as their own weight decay."""
        forward = self._dfc_optimizers["forward"](self.dfc_net.forward_parameters())
        if self.dfc_normalize_lr:
            for group in forward.param_groups:
                group["lr"] = group["lr"] / self.dfc_target_stepsize
        if not self.dfc_method.train_feedback:
            return [forward]
        qs = self.dfc_net.trainable_feedback()
        if not qs:
            raise ValueError("there are no feedback weights to train (a one-layer network with a frozen Q_L)")
        feedback = [self._dfc_optimizers[name](qs) for name in ("feedback", "pretrain")]
        decay = self.dfc_feedback_config.weight_decay
        for name, opt in zip(("feedback_optimizer", "pretrain_optimizer"), feedback):
            for group in opt.param_groups:
                own = group.get("weight_decay")
                if own is None:
                    if decay:
                        raise ValueError(
                            f"{name} ({type(opt).__name__}) has no weight_decay setting, so feedback.weight_decay="
                            f"{decay} cannot be applied; set feedback.weight_decay: 0 or use an optimizer with weight decay"
                        )
                elif own and decay and own != decay:
                    raise ValueError(
                        f"{name} has weight_decay={own} but feedback.weight_decay={decay}: give the feedback "
                        "weight decay in one place (feedback.weight_decay, applied by the optimizer)"
                    )
                elif decay:
                    group["weight_decay"] = decay
        return [forward, *feedback]

    # ------------------------------------------------------------------ schedule
    @property
    def dfc_phase(self) -> PhaseInfo:
        """The phase of the current epoch (a pure function of ``current_epoch``)."""
        return self.dfc_schedule(self.current_epoch)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self._trainer is None:
            return
        check_strategy(self.trainer.strategy)
        check_precision(self.trainer.precision)
        if str(self.trainer.precision) in ("64-true", "64"):
            # Lightning restores a checkpoint's weights before converting the module: convert
            # first so that float64 weights are restored exactly.
            self.double()
        loop = self.trainer.fit_loop
        if stage == "fit" and self._dfc_translated_loop is not loop:
            # trainer.max_epochs counts forward-weight (wake) epochs, as in the paper (once per
            # Trainer: the same module may be fit again by another Trainer).
            self._dfc_translated_loop = loop
            if loop.max_epochs is not None and loop.max_epochs > 0:
                self._dfc_forward_epochs = loop.max_epochs
                loop.max_epochs = self.dfc_schedule.total_epochs(loop.max_epochs)

    def _dfc_epoch_seed(self, epoch: int) -> int:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return (seed * 1_000_003 + epoch * 7919) % (2**62)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Every epoch's randomness (shuffling, sleep noise) derives from (seed, epoch, rank), so a
        # run resumed from a checkpoint repeats the uninterrupted run exactly. Lightning creates the
        # first epoch's data iterator before on_train_epoch_start, and later ones after
        # on_train_epoch_end: reseed the global RNG (shuffling) at those two points. When resuming,
        # the loop state is restored only after this hook: on_load_checkpoint noted the epoch.
        start = self._dfc_resume_epoch if self._dfc_resume_epoch is not None else self.current_epoch
        torch.manual_seed(self._dfc_epoch_seed(start))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        torch.manual_seed(self._dfc_epoch_seed(self.current_epoch + 1))

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._dfc_generator = torch.Generator(device=self.device)
        self._dfc_generator.manual_seed(self._dfc_epoch_seed(self.current_epoch) + 104_729 * (self.global_rank + 1))
        info = self.dfc_phase
        self.log("phase", float(info.phase.code), prog_bar=True, on_step=False, on_epoch=True)
        self.log("forward_epoch", float(info.forward_epoch), on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ training
    def dfc_unpack_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of a batch; override for other batch layouts."""
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return batch[0], batch[1]
        if isinstance(batch, dict) and {"x", "y"} <= batch.keys():
            return batch["x"], batch["y"]
        raise ValueError(
            "cannot read the batch: expected (inputs, targets) or a dict with 'x' and 'y'; "
            "override dfc_unpack_batch() for other layouts"
        )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self.dfc_unpack_batch(batch)
        x = self._dfc_checked_input(x, y, batch_idx)
        phase = self.dfc_phase.phase
        with torch.no_grad():
            if self.trainer.fast_dev_run and self.dfc_method.train_feedback:
                # One fast_dev_run step exercises both phases.
                self._dfc_sleep_step(x, y, Phase.SLEEP)
                self._dfc_wake_step(x, y)
            elif phase is Phase.WAKE:
                self._dfc_wake_step(x, y)
            else:
                self._dfc_sleep_step(x, y, phase)

    def _dfc_checked_input(self, x: Tensor, y: Tensor, batch_idx: int) -> Tensor:
        x = self.dfc_net.prepare_input(x)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"batch {batch_idx}: the inputs contain NaN or inf values; clean the data")
        n_out = self.dfc_net.sizes[-1]
        if self.dfc_loss == "cross_entropy":
            if y.dtype.is_floating_point or y.dim() != 1:
                raise ValueError(f"batch {batch_idx}: cross_entropy needs integer labels of shape (B,), got {tuple(y.shape)} {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_out):
                raise ValueError(f"batch {batch_idx}: labels must lie in [0, {n_out}), got [{int(y.min())}, {int(y.max())}]")
        else:
            if y.shape != (x.shape[0], n_out):
                raise ValueError(f"batch {batch_idx}: mse targets must have shape (B, {n_out}), got {tuple(y.shape)}")
            if not bool(torch.isfinite(y).all()):
                raise ValueError(f"batch {batch_idx}: the targets contain NaN or inf values; clean the data")
        return x

    def _dfc_any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is True on any rank (keeps all ranks on the same code path)."""
        if self.trainer.world_size <= 1:
            return flag
        total = self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum")
        return bool(total > 0)

    def dfc_wake_update(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                        world_size: int = 1) -> Update:
        """The forward-weight update of one wake batch, as the training step computes it (no
        clipping, no optimizer step). Single-phase Strong-DFC also returns the feedback-weight
        update of the same simulation (``Update.feedback``).

        Args:
            x: flattened input (B, n_0); y: labels (B,) or regression targets (B, n_L).
            generator: the noise's random generator (noisy dynamics).
            world_size: number of DDP ranks: lambda multiplies the gradient of the *global*
                batch-mean loss, and each rank sees 1/world_size of the batch.
        """
        return self.dfc_method.forward_update(self.dfc_net.params(), x, y, self.dfc_update_settings(generator, world_size),
                                              self.dfc_target())

    def dfc_target(self):
        """The wake simulation's target (:mod:`~lightning_dfc.core.targets`), configured."""
        return self.dfc_method.wake_target(self.dfc_updates)

    def dfc_update_settings(self, generator: torch.Generator | None = None, world_size: int = 1) -> UpdateSettings:
        """What the method's forward update needs besides the batch; lambda per DDP rank."""
        method = self.dfc_method
        return UpdateSettings(
            loss=self.dfc_loss,
            target_stepsize=self.dfc_target_stepsize / max(world_size, 1),
            dynamics=self.dfc_dynamics,
            criterion=self.dfc_criterion,
            learning_rule=self.dfc_updates.learning_rule,
            generator=generator,
            feedback_rule=self._dfc_feedback_rule(pretraining=False) if method.single_phase else None,
        )

    def dfc_sleep_update(self, x: Tensor, y: Tensor, pretraining: bool,
                         generator: torch.Generator | None = None) -> tuple[list[Tensor], dict[str, float]]:
        """The feedback-weight update of one sleep (or pre-training) batch, as the training step
        computes it (no clipping, no weight decay: the optimizer adds it). One tensor per Q_i.

        DFC: the controller holds the feedforward output against the noise. Strong-DFC: it drives
        the output to the label; in pre-training (``pretrain_mode='published'``) with the linear
        error, as the authors' runs did."""
        cfg, method = self.dfc_feedback_config, self.dfc_method
        target = method.sleep_target(self.dfc_updates, cfg, pretraining)
        return method.sleep_update(self.dfc_net.params(), x, y if method.strong else None, self.dfc_loss, target,
                                   cfg.simulation, self._dfc_feedback_rule(pretraining), generator)

    def _dfc_wake_step(self, x: Tensor, y: Tensor) -> None:
        net = self.dfc_net
        params = net.params()
        update = self.dfc_wake_update(x, y, self._dfc_generator, self.trainer.world_size)
        tensors = update.tensors()
        stats = update.stats
        feedback_grads = update.feedback
        bad = (
            stats.get("finite", 1.0) == 0.0
            # the control error grew: unstable dynamics (with noise, the final error is noise-dominated)
            or (stats.get("error_ratio", 0.0) > 1.0 and not self.dfc_dynamics.noisy)
            or not all(bool(torch.isfinite(t).all()) for t in tensors)
            or (feedback_grads is not None and not all(bool(torch.isfinite(g).all()) for g in feedback_grads))
        )
        logged = ("steps", "non_converged", "diverged", "excluded", "control_loss")
        self.log_dict(
            {f"dfc/{k}": float(v) for k, v in stats.items() if k in logged and math.isfinite(float(v))},
            on_step=True,
            on_epoch=True,
        )
        if self._dfc_any_rank(bad):
            self._dfc_register_divergence("wake")
            return
        self._dfc_diverged_in_a_row = 0
        forward_opt = self._dfc_opts()[0]
        forward_opt.zero_grad()
        params_list = net.forward_parameters()
        for p, g in zip(params_list, tensors):
            p.grad = g.to(p.dtype)
        sync_updates(self.trainer.strategy, params_list)
        clipped = self._dfc_clip(self._dfc_forward_clip_groups(), self.dfc_updates.clip_norm)
        if self.dfc_record_steps:
            self.dfc_last_wake = WakeRecord(
                x=x,
                y=y,
                params=params._replace(
                    weights=tuple(w.clone() for w in params.weights),
                    biases=tuple(None if b is None else b.clone() for b in params.biases),
                    feedback=tuple(q.clone() for q in params.feedback),
                ),
                update=[p.grad.detach().clone() for p in params_list],
                stats=dict(stats),
            )
        forward_opt.step()
        self.log("dfc/clipped", float(clipped), on_step=True, on_epoch=True, reduce_fx="sum")
        if feedback_grads is not None:  # single-phase: Q learns from the same simulation
            self._dfc_step_feedback(feedback_grads, self._dfc_opts()[1], "dfc/feedback_clipped")
        output = feedforward(params, x).r[-1]  # before the step: the batch the update came from
        self.dfc_train_loss(loss_value(output, y, self.dfc_loss))
        self.log("train_loss", self.dfc_train_loss, on_step=True, on_epoch=True, prog_bar=True)
        if self.dfc_train_acc is not None:
            self.dfc_train_acc(output, y)
            self.log("train_acc", self.dfc_train_acc, on_step=False, on_epoch=True, prog_bar=True)

    def _dfc_sleep_step(self, x: Tensor, y: Tensor, phase: Phase) -> None:
        if self.dfc_record_steps:
            self.dfc_last_sleep_input = x
        pretraining = phase is Phase.PRETRAIN
        grads, stats = self.dfc_sleep_update(x, y, pretraining, self._dfc_generator)
        bad = stats["finite"] == 0.0 or not all(bool(torch.isfinite(g).all()) for g in grads)
        if self._dfc_any_rank(bad):
            self._dfc_register_divergence("sleep")
            return
        self._dfc_diverged_in_a_row = 0
        self._dfc_step_feedback(grads, self._dfc_opts()[2 if pretraining else 1], "sleep/clipped")
        self.log("sleep/control_norm", stats["control_norm"], on_step=True, on_epoch=True)

    def _dfc_step_feedback(self, grads: list[Tensor], opt, clip_log: str) -> None:
        """Apply feedback-weight updates (one per Q_i; Q_L's dropped when frozen) with ``opt``.

        With ``clip_grouping='all'`` a frozen Q_L's update still counts in the clipping norm, as in
        the DFC paper's code (it computes Q_L's update and clips all Q updates together)."""
        cfg = self.dfc_feedback_config
        qs = self.dfc_net.trainable_feedback()
        opt.zero_grad()
        for q, g in zip(qs, grads):  # Q_L last: dropped when frozen
            q.grad = g.to(q.dtype)
        frozen = [g.to(qs[0].dtype) for g in grads[len(qs):]]
        sync_tensors(self.trainer.strategy, [q.grad for q in qs] + frozen)
        if self.dfc_feedback_clip_grouping == "all":
            groups = [[q.grad for q in qs] + frozen]
        else:
            groups = [[q.grad] for q in qs]
        clipped = self._dfc_clip(groups, cfg.clip_norm)
        if cfg.clip_norm is not None:
            self.log(clip_log, float(clipped), on_step=False, on_epoch=True, reduce_fx="sum")
        opt.step()

    def _dfc_forward_clip_groups(self) -> list[list[Tensor]]:
        """The forward updates (``.grad``) grouped for clipping: per tensor or per layer."""
        if self.dfc_forward_clip_grouping == "tensor":
            return [[p.grad] for p in self.dfc_net.forward_parameters()]
        return [[p.grad for p in (lin.weight, lin.bias) if p is not None] for lin in self.dfc_net.layers]

    @staticmethod
    @torch.no_grad()
    def _dfc_clip(groups: list[list[Tensor]], max_norm: float | None) -> int:
        """Scale each group of updates in place to at most ``max_norm`` (their joint 2-norm, as
        ``torch.nn.utils.clip_grad_norm_`` does it); returns how many groups were clipped."""
        if max_norm is None:
            return 0
        clipped = 0
        for group in groups:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in group]))
            clipped += int(norm > max_norm)
            coef = max_norm / (norm + 1e-6)  # torch's formula, epsilon included
            if coef < 1.0:
                for g in group:
                    g.mul_(coef)
        return clipped

    def _dfc_opts(self) -> list:
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def _dfc_register_divergence(self, phase: str) -> None:
        self._dfc_diverged_in_a_row += 1
        self.log(f"{'dfc' if phase == 'wake' else 'sleep'}/skipped_batches", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
        limit = self.dfc_updates.max_diverged_batches
        if self._dfc_diverged_in_a_row >= limit:
            raise DivergenceError(
                f"the {phase}-phase dynamics diverged on {limit} consecutive batches (their updates "
                "were skipped). Remedies: pre-train the feedback weights longer "
                "(feedback.pretrain_epochs), increase the controller leak alpha or the gain k_p, "
                "use a smaller dt, or lower the learning rates."
            )

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dfc"] = {
            "diverged_in_a_row": self._dfc_diverged_in_a_row,
            "forward_epochs": self._dfc_forward_epochs,
            "variant": self.dfc_variant,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("dfc", {})
        self._dfc_diverged_in_a_row = int(state.get("diverged_in_a_row", 0))
        try:
            progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
            self._dfc_resume_epoch = int(progress["processed"])  # epochs whose batches all ran
        except (KeyError, TypeError):
            self._dfc_resume_epoch = None
