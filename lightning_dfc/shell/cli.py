"""The ``lightning-dfc`` command: LightningCLI in subclass mode for models and data.

    lightning-dfc fit --config examples/mnist_dfc.yaml
    lightning-dfc fit --config examples/mnist_dfc.yaml --model.variant=dfc_ssa --trainer.max_epochs=5
    lightning-dfc plot lightning_logs/fig3 --output docs/figures/fig3  (lightning_dfc.shell.plotting)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

from ..__about__ import __version__
from . import data as _data  # noqa: F401  (short class names in configs)
from .data import DataNotFoundError
from .module import DFCModule  # noqa: F401

__all__ = ["DFCLightningCLI", "build_cli", "main", "resolve_last_checkpoint"]


TRACEBACK_ENV = "LIGHTNING_DFC_TRACEBACK"
PLOT_HELP = ("\nother subcommands:\n  plot                Plot logged runs: the Fig. 3 panels or any logged keys "
             "(lightning-dfc plot --help)")


class DFCLightningCLI(LightningCLI):
    """LightningCLI whose models and data modules may be any subclass (DFCModule, a DFCMixin
    model, a user's own LightningModule); optimizers are the model's own arguments.

    A bad value in a config (refused when the classes are built) prints one ``error:`` line with
    the refusing class's own message and exits with status 2, like a key typo; set
    ``LIGHTNING_DFC_TRACEBACK=1`` for the full traceback."""

    def parse_arguments(self, parser, args) -> None:
        """Parse, then resolve ``--ckpt_path last`` to the newest run's ``last.ckpt`` (see
        :func:`resolve_last_checkpoint`): Lightning looks for it in the new run's own folder,
        where there is none, and would start from scratch with a warning."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand or self.config[subcommand].get("ckpt_path") != "last":
            return
        try:
            path = resolve_last_checkpoint(self.config[subcommand]["trainer"])
        except FileNotFoundError as error:
            self.parser.exit(2, f"{self.parser.prog}: error: {error}\n")
        if path is not None:
            self.config[subcommand]["ckpt_path"] = path
            sys.stderr.write(f"{self.parser.prog}: --ckpt_path last: resuming from {path}\n")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            if os.environ.get(TRACEBACK_ENV):
                raise
            self.parser.exit(2, f"{self.parser.prog}: error: {root_cause(error)}\n"
                                f"(set {TRACEBACK_ENV}=1 for the full traceback)\n")


def resolve_last_checkpoint(trainer) -> str | None:
    """The ``last.ckpt`` that ``--ckpt_path last`` means: that of the newest run (highest
    ``version_N``) under the logger's ``save_dir/name`` (the example configs' CSV logger puts each
    run's checkpoints in ``save_dir/name/version_N/checkpoints``). ``None`` where the trainer has
    no logger with a ``save_dir`` (its checkpoints then share one folder, where Lightning finds
    ``last`` itself). The resumed run logs into a new version, so the earlier run's logs are kept.

    Raises:
        FileNotFoundError: no run there has a ``last.ckpt``.
    """
    logger = trainer.get("logger")
    init = getattr(logger, "init_args", None)  # a parsed logger (Namespace); None for logger: false
    if not init or not init.get("save_dir"):
        return None
    root = Path(init["save_dir"]) / (init.get("name") or "lightning_logs")
    version = init.get("version")
    if version is not None:
        folders = [root / (version if isinstance(version, str) else f"version_{version}")]
    else:
        numbered = [(int(m.group(1)), d) for d in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", d.name))]
        folders = [d for _, d in sorted(numbered, reverse=True)]
    for folder in folders:
        last = folder / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
    raise FileNotFoundError(
        f"--ckpt_path last: no run under {root} has a checkpoints/last.ckpt (the config's logger: save_dir "
        f"{init['save_dir']!r}, name {init.get('name')!r}). Give the checkpoint's path (--ckpt_path PATH), or "
        "drop --ckpt_path to start a new run.")


def root_cause(error: BaseException) -> str:
    """The message of the innermost exception of a chain (the one that named the problem)."""
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None:
            return str(error).strip()
        error = inner


def importable_from_here() -> None:
    """Put the current directory first on ``sys.path`` (where ``python -m`` puts it; a console
    script does not), so that a config's ``class_path`` can name a module there."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


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

    ``plot ...`` is handled by :func:`lightning_dfc.shell.plotting.plot_main` (not LightningCLI). Data that
    is missing and cannot be downloaded ends the run with one ``error:`` line and status 2. A
    config's ``class_path`` may name a module of the current directory (your own LightningModule,
    e.g. ``examples.wrap_existing_model.LitClassifier`` from the checkout), as with ``python -m``.
    """
    importable_from_here()
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
