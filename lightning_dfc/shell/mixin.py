"""DFC training for any LightningModule whose network is a stack of ``nn.Linear`` + activations.

:class:`DFCMixin` replaces ``training_step`` and ``configure_optimizers`` with DFC's wake/sleep
training (manual optimization, updates written to ``.grad``, averaged across ranks) and keeps
everything else of the host module: its validation/test steps, metrics, logging and data hooks.

    class DFCLitClassifier(DFCMixin, LitClassifier):
        pass

    model = DFCLitClassifier(hidden=256, dfc_variant="dfc", dfc_network_attribute="model")
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from ..core.config import TARGET_STEPSIZE, FeedbackConfig, SimulationConfig, UpdateConfig
from ..core.numerics import Numerics
from .configuration import ADAM_BETAS, DFCConfiguration, default_optimizer
from .phases import DFCPhases
from .steps import DFCSteps, DivergenceError, WakeRecord

__all__ = ["DFCMixin", "WakeRecord", "DivergenceError", "default_optimizer", "ADAM_BETAS", "check_untrained"]


class DFCMixin(DFCSteps, DFCPhases, DFCConfiguration):
    """Adds DFC training to a LightningModule (put it first in the bases).

    Keyword args (all prefixed ``dfc_`` so that they never collide with the host's own):
        dfc_network: the network, if the host module does not create it itself; it is stored
            as attribute ``dfc_network_attribute``.
        dfc_network_attribute: name of the attribute holding the network (an ``nn.Sequential``
            of ``nn.Linear`` + elementwise activations, or a list of such modules).
        dfc_allow_untrained: DFC trains only that network (and its feedback weights). A host
            module with other trainable parameters (a second attribute, e.g. an encoder and a
            decoder) is refused, naming them, unless this is set: then they are left untrained,
            and a warning names them.
        dfc_variant, dfc_loss, dfc_target_stepsize, dfc_dynamics, dfc_feedback, dfc_updates,
        dfc_forward_optimizer, dfc_feedback_optimizer, dfc_pretrain_optimizer, dfc_numerics,
        dfc_resume_with_changes: as the arguments of :class:`~lightning_dfc.DFCModule` without the prefix.

    Everything else is passed on to the host module's ``__init__``.

    The parts: :class:`~.configuration.DFCConfiguration` (settings, method object, network,
    optimizers), :class:`~.phases.DFCPhases` (the epoch schedule, seeding, checkpoint state) and
    :class:`~.steps.DFCSteps` (each batch: the method's update applied, synced, clipped, logged).
    """

    def __init__(
        self,
        *args: Any,
        dfc_network: nn.Module | None = None,
        dfc_network_attribute: str = "network",
        dfc_variant: str = "dfc",
        dfc_loss: str = "cross_entropy",
        dfc_target_stepsize: float = TARGET_STEPSIZE,
        dfc_dynamics: SimulationConfig | None = None,
        dfc_feedback: FeedbackConfig | None = None,
        dfc_updates: UpdateConfig | None = None,
        dfc_forward_optimizer: OptimizerCallable | None = None,
        dfc_feedback_optimizer: OptimizerCallable | None = None,
        dfc_pretrain_optimizer: OptimizerCallable | None = None,
        dfc_numerics: str | Numerics = "fast",
        dfc_allow_untrained: bool = False,
        dfc_resume_with_changes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if dfc_network is not None:
            setattr(self, dfc_network_attribute, dfc_network)
        self.dfc_attach(
            network_attribute=dfc_network_attribute,
            allow_untrained=dfc_allow_untrained,
            variant=dfc_variant,
            loss=dfc_loss,
            target_stepsize=dfc_target_stepsize,
            dynamics=dfc_dynamics,
            feedback=dfc_feedback,
            updates=dfc_updates,
            forward_optimizer=dfc_forward_optimizer,
            feedback_optimizer=dfc_feedback_optimizer,
            pretrain_optimizer=dfc_pretrain_optimizer,
            numerics=dfc_numerics,
            resume_with_changes=dfc_resume_with_changes,
        )

    def dfc_attach(self, network_attribute: str = "network", allow_untrained: bool = False, **settings: Any) -> None:
        """Set DFC up on this (constructed) module: wrap the network in attribute
        ``network_attribute`` and check that nothing else would stay untrained. ``settings``: the
        ``dfc_`` arguments without the prefix (:meth:`configure_dfc`). ``__init__`` calls it, and
        so does :class:`~lightning_dfc.DFCWrapper` on a module it turns into a DFC one."""
        network = getattr(self, network_attribute, None)
        if network is None:
            raise ValueError(
                f"{type(self).__name__} has no attribute {network_attribute!r}: name the attribute that holds "
                "your nn.Sequential (DFCMixin: dfc_network_attribute=<name>; DFCWrapper: network: <name>)"
            )
        self.configure_dfc(network, **settings)
        check_untrained(self, network_attribute, allow_untrained)


def check_untrained(module: nn.Module, attribute: str, allowed: bool) -> None:
    """Refuse (or, when ``allowed``, warn about) trainable parameters of ``module`` that DFC does
    not train: those outside its network ``attribute`` and its feedback weights.

    Raises:
        ValueError: naming the parameters and the fix.
    """
    trained = {id(p) for p in module.dfc_net.forward_parameters()} | {id(q) for q in module.dfc_feedback_weights}
    left = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in trained]
    if not left:
        return
    shown = ", ".join(left[:6]) + (f" and {len(left) - 6} more" if len(left) > 6 else "")
    what = (f"DFCMixin trains only the network in {attribute!r} (and its feedback weights), but the module has "
            f"{len(left)} other trainable parameter(s): {shown}")
    if allowed:
        warnings.warn(f"{what}. They stay untrained (dfc_allow_untrained=True).", UserWarning, stacklevel=3)
        return
    raise ValueError(
        f"{what}; they would never train. Put every layer DFC should train into one nn.Sequential held by "
        f"{attribute!r} (e.g. nn.Sequential(self.encoder, self.decoder) flattened into one stack of "
        "nn.Linear + activations), freeze the others (requires_grad_(False)), or pass dfc_allow_untrained=True "
        "(DFCWrapper: allow_untrained: true) to leave them untrained on purpose."
    )
