"""The ``lightning-dfc`` command: LightningCLI in subclass mode for models and data.

    lightning-dfc fit --config examples/mnist_dfc.yaml
    lightning-dfc fit --config examples/mnist_dfc.yaml --model.variant=dfc_ssa --trainer.max_epochs=5
    lightning-dfc plot lightning_logs/fig3 --output docs/figures/fig3  (lightning_dfc.plotting)
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

from ..__about__ import __version__
from . import data as _data  # noqa: F401  (short class names in configs)
from .data import DataNotFoundError
from .module import DFCModule  # noqa: F401

__all__ = ["DFCLightningCLI", "build_cli", "main"]


TRACEBACK_ENV = "LIGHTNING_DFC_TRACEBACK"
PLOT_HELP = ("\nother subcommands:\n  plot                Plot logged runs: the Fig. 3 panels or any logged keys "
             "(lightning-dfc plot --help)")


class DFCLightningCLI(LightningCLI):
    """LightningCLI whose models and data modules may be any subclass (DFCModule, a DFCMixin
    model, a user's own LightningModule); optimizers are the model's own arguments.

    A bad value in a config (refused when the classes are built) prints one ``error:`` line with
    the refusing class's own message and exits with status 2, like a key typo; set
    ``LIGHTNING_DFC_TRACEBACK=1`` for the full traceback."""

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            if os.environ.get(TRACEBACK_ENV):
                raise
            self.parser.exit(2, f"{self.parser.prog}: error: {root_cause(error)}\n"
                                f"(set {TRACEBACK_ENV}=1 for the full traceback)\n")


def root_cause(error: BaseException) -> str:
    """The message of the innermost exception of a chain (the one that named the problem)."""
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None:
            return str(error).strip()
        error = inner


def build_cli(args: ArgsType = None, run: bool = True) -> DFCLightningCLI:
    """Build (and by default run) the CLI.

    Args:
        args: command-line arguments (``None``: ``sys.argv``); a list or dict, for tests.
        run: run the subcommand (``False``: only instantiate, for inspection).
    """
    return DFCLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"version": __version__, "prog": "lightning-dfc"},
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Entry point of ``lightning-dfc`` and ``python -m lightning_dfc``.

    ``plot ...`` is handled by :func:`lightning_dfc.plotting.plot_main` (not LightningCLI). Data that
    is missing and cannot be downloaded ends the run with one ``error:`` line and status 2.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)) and argv and argv[0] == "plot":
        from .plotting import plot_main

        plot_main(list(argv[1:]))
        return
    if isinstance(argv, (list, tuple)) and list(argv[:1]) in (["-h"], ["--help"]):
        try:
            build_cli(args)
        finally:  # LightningCLI lists its own subcommands only
            print(PLOT_HELP)
    try:
        build_cli(args)
    except DataNotFoundError as error:  # e.g. the main job on a machine without MNIST or internet
        if os.environ.get(TRACEBACK_ENV):
            raise
        sys.stderr.write(f"lightning-dfc: error: {error.short}\n(set {TRACEBACK_ENV}=1 for the full traceback)\n")
        raise SystemExit(2) from None
