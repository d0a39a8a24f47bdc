"""The zero-code door: an existing LightningModule, unmodified, trained with DFC from a config.

    model:
      class_path: lightning_dfc.DFCWrapper
      init_args:
        module:                      # your LightningModule, as you would configure it
          class_path: my_package.LitClassifier
          init_args: {hidden: 256}
        network: model               # the attribute that holds its nn.Sequential
        variant: dfc

``DFCWrapper(module, ...)`` returns ``module`` itself, turned into an instance of a subclass of
its own class with :class:`~lightning_dfc.DFCMixin` in front (``DFC<YourClass>``, made once per
class): exactly what ``class DFCLit(DFCMixin, LitClassifier)`` would give, without writing it.
The module keeps its validation, test and predict steps, its metrics, logging and hooks; DFC
replaces ``training_step`` and ``configure_optimizers``. Why a class change and not a module
that holds the host (``docs/architecture.md``, "The doors"): Lightning calls the hooks, and
``self.log``, of the module it is given, so a holder would have to forward every hook and every
log call; the subclass shares the host's ``self`` with no forwarding, and it pickles (DDP's
spawned processes), checkpoints and resumes like the subclass one would write.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import OptimizerCallable

from ..core.config import TARGET_STEPSIZE, FeedbackConfig, SimulationConfig, UpdateConfig
from ..core.numerics import Numerics
from .mixin import DFCMixin

__all__ = ["DFCWrapper", "dfc_class"]


class _Wrapped:
    """The base of the classes :func:`dfc_class` makes: pickled by their host class, as they are
    not importable by name."""

    __dfc_host__: type

    def __reduce_ex__(self, protocol: int) -> tuple:
        return _rebuild, (type(self).__dfc_host__, self.__getstate__())


def _rebuild(host: type, state: dict[str, Any]) -> pl.LightningModule:
    module = object.__new__(dfc_class(host))
    module.__setstate__(state)
    return module


@functools.cache
def dfc_class(host: type) -> type:
    """``DFC<Host>``: ``host`` (a LightningModule class) with :class:`DFCMixin` in front."""
    if not (isinstance(host, type) and issubclass(host, pl.LightningModule)):
        raise TypeError(f"DFCWrapper needs a LightningModule, got {host!r}")
    if issubclass(host, DFCMixin):
        raise TypeError(f"{host.__name__} trains with DFC already (it is a DFCMixin): use it as it is")
    return type(f"DFC{host.__name__}", (_Wrapped, DFCMixin, host),
                {"__module__": __name__, "__qualname__": f"DFC{host.__name__}", "__dfc_host__": host})


class DFCWrapper(pl.LightningModule):
    """Train an existing LightningModule, unmodified, with DFC (arguments: :meth:`__new__`)."""

    def __new__(
        cls,
        module: pl.LightningModule,
        network: str = "network",
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
        allow_untrained: bool = False,
        resume_with_changes: bool = False,
    ) -> pl.LightningModule:
        """``module`` itself, turned into a ``DFC<its class>``: no DFCWrapper instance is made.

        Args:
            module: the LightningModule (an instance; in a config, its ``class_path`` and
                ``init_args``). It is returned, turned into a ``DFC<its class>``.
            network: the attribute of ``module`` that holds the network DFC trains (an
                ``nn.Sequential`` of ``nn.Linear`` + element-wise activations). Every other trainable
                parameter of ``module`` is refused by name, unless ``allow_untrained``.
            variant: the method (``dfc``, ``dfc_ss``, ``dfa``, ``bp``, ``strong_dfc``, ...).
            loss: ``cross_entropy`` (labels) or ``mse`` (targets).
            target_stepsize: lambda.
            dynamics: the wake simulation.
            feedback: the feedback weights' training and the wake/sleep schedule.
            updates: how the updates are formed and guarded.
            forward_optimizer: of the forward weights (default: Adam).
            feedback_optimizer: of the feedback weights in sleep epochs (default: the papers' Adam).
            pretrain_optimizer: of the feedback weights in pre-training (default: the papers' Adam).
            numerics: ``fast`` (default) or ``exact`` (the published numerics).
            allow_untrained: leave trainable parameters outside ``network`` untrained, with a warning
                naming them, instead of refusing.
            resume_with_changes: a fit resumed from a checkpoint may change its DFC settings
                (each change is named); without it a change is refused.
        """
        return wrap(module, network, allow_untrained, variant=variant, loss=loss, target_stepsize=target_stepsize,
                    dynamics=dynamics, feedback=feedback, updates=updates, forward_optimizer=forward_optimizer,
                    feedback_optimizer=feedback_optimizer, pretrain_optimizer=pretrain_optimizer, numerics=numerics,
                    resume_with_changes=resume_with_changes)


def wrap(module: pl.LightningModule, network: str = "network", allow_untrained: bool = False,
         **settings: Any) -> pl.LightningModule:
    """:class:`DFCWrapper`'s work: change ``module``'s class to ``DFC<its class>`` and set DFC up
    on it (``settings``: DFCWrapper's arguments without the ``dfc_`` prefix)."""
    if not isinstance(module, pl.LightningModule):
        raise TypeError(f"DFCWrapper(module=...) needs a LightningModule instance, got {type(module).__name__}")
    module.__class__ = dfc_class(type(module))
    keep_own_hparams(module)
    module.dfc_attach(network_attribute=network, allow_untrained=allow_untrained, **settings)
    return module


def keep_own_hparams(module: pl.LightningModule) -> None:
    """Give ``module`` back the hyperparameters it saved itself. LightningCLI instantiates the
    model inside a context that makes ``save_hyperparameters()`` store the *model's* config, and
    here the host's ``save_hyperparameters()`` runs in it: without this, the host's
    ``self.hparams.hidden`` would be gone (replaced by DFCWrapper's arguments). Its own are the
    ``init_args`` of the config's ``module``, which also load it back:
    ``LitClassifier.load_from_checkpoint(path, strict=False)`` (the feedback weights are extra)."""
    hparams = module.hparams
    inner = hparams.get("module")
    if str(hparams.get("_class_path", "")).endswith("DFCWrapper") and isinstance(inner, dict):
        own = dict(inner.get("init_args") or {})
        hparams.clear()
        hparams.update(own)
