"""The ``lightning-dfc`` command: LightningCLI in subclass mode for models and data.

    lightning-dfc fit --config examples/mnist_dfc.yaml
    lightning-dfc fit --config examples/mnist_dfc.yaml --model.variant=dfc_ssa --trainer.max_epochs=5
    lightning-dfc plot lightning_logs/fig3 --output docs/figures/fig3  (lightning_dfc.shell.plotting)
"""

from __future__ import annotations

import copy
import os
import re
import sys
import zipfile
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from ..__about__ import __version__
from . import data as _data  # noqa: F401  (short class names in configs)
from .data import DataNotFoundError
from .distributed import check_precision
from .module import DFCModule  # noqa: F401
from .resume import ResumeError

__all__ = ["DFCLightningCLI", "build_cli", "main", "resolve_last_checkpoint"]


TRACEBACK_ENV = "LIGHTNING_DFC_TRACEBACK"
PLOT_HELP = ("\nother subcommands:\n  plot                Plot logged runs: the Fig. 3 panels or any logged keys "
             "(lightning-dfc plot --help)")


# ``--ckpt_path`` values that are not file paths (Lightning resolves them itself)
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")
GPU_ACCELERATORS = ("gpu", "cuda")


class DFCArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose parse errors end in one ``error:`` line (the key, what it
    expects and the value given) and a tip, instead of the usage and jsonargparse's dump of
    every type a nested value could have had; ``LIGHTNING_DFC_TRACEBACK=1`` keeps the full message."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get(TRACEBACK_ENV):  # nested parsers raise; the top one reports
            return super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        self.exit(2, f"{prog}: error: {parse_error_line(message)}\n"
                     f"(run {prog} --help for the options; set {TRACEBACK_ENV}=1 for the parser's full message)\n")


def parse_error_line(message: str) -> str:
    """One line for a jsonargparse error. A nested value that failed (jsonargparse reports a
    tree: every union member of every level, down to the key that refused the value) becomes the
    option as typed, the value given and the deepest level's reason, for example
    ``--model.init_args.dynamics.steps=abc: expected int``; other errors keep their first line."""
    lines = [line for line in message.splitlines() if line.strip()]
    nested = re.findall(r"NestedArg\(key='([^']*)', val='([^']*)'\)", message)
    top = re.match(r'\s*Parser key "([^"]*)"', lines[0]) if lines else None
    if top and not nested:  # a plain key, e.g. --trainer.max_epochs=x
        given = re.findall(r"(?:Got|Given) value: (.*)$", message, flags=re.MULTILINE)
        option = f"--{top.group(1)}" + (f"={given[-1].strip()}" if given else "")
        return f"{option}: {_deepest_reason(lines)}"
    if not (nested and top):
        return lines[0].strip() if lines else message.strip()
    key, value = nested[-1]  # the outermost: the whole key below the top level
    prefix = f"{top.group(1)}.init_args." if "class_path" in message else f"{top.group(1)}."
    return f"--{prefix}{key}={value}: {_deepest_reason(lines)}"


def _deepest_reason(lines: list[str]) -> str:
    """The reason of the most deeply indented level of a jsonargparse error tree."""
    depth = lambda line: len(line) - len(line.lstrip())  # noqa: E731
    keys = [i for i, line in enumerate(lines) if line.strip().startswith('Parser key "')]
    refused = [i for i, line in enumerate(lines) if "is not accepted" in line]
    if refused and (not keys or depth(lines[refused[-1]]) > depth(lines[keys[-1]])):
        return lines[refused[-1]].strip().replace("Option", "option", 1)
    deepest = max(keys, key=lambda i: depth(lines[i]))
    block = []
    for line in lines[deepest + 1:]:
        if depth(line) <= depth(lines[deepest]):
            break
        block.append(line.strip())
    text = " ".join(block)
    subtypes = re.search(r"Subtypes: \[(.*?)\]( Errors:|$)", text)
    if subtypes:
        names = [_type_name(t) for t in re.split(r",\s*(?![^\[]*\])", subtypes.group(1))]
        return "expected " + (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0])
    expected = re.search(r"Expected a (.*?)\. Got value", text)
    return f"expected {_type_name(expected.group(1))}" if expected else text


def _type_name(text: str) -> str:
    """``<class 'float'>`` -> ``float``, ``typing.Literal['auto']`` -> ``'auto'``, NoneType -> None."""
    text = text.strip()
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return literal.group(1)
    name = re.fullmatch(r"<class '([^']*)'>", text)
    name = name.group(1).rsplit(".", 1)[-1] if name else text
    return "None" if name == "NoneType" else name


def check_run_arguments(config) -> str | None:
    """What a subcommand's parsed arguments ask for that cannot work, as one line (``None``: all
    fine), before anything is built: a ``--ckpt_path`` that is missing or not a complete
    checkpoint, a precision our updates refuse (named as asked: Lightning turns ``16-mixed`` into
    ``bf16-mixed`` on a CPU), a GPU accelerator on a machine without one."""
    ckpt = config.get("ckpt_path")
    if isinstance(ckpt, str) and ckpt not in CKPT_KEYWORDS and "://" not in ckpt and not ckpt.startswith("registry:"):
        path = Path(ckpt)
        if not path.exists():
            return (f"--ckpt_path {ckpt}: there is no such file. Give the path of a .ckpt file (a run's "
                    "checkpoints/last.ckpt, or --ckpt_path last for the newest run's).")
        if path.is_dir() or not zipfile.is_zipfile(path):
            return (f"--ckpt_path {ckpt}: not a complete checkpoint (torch saves a zip archive; this one is "
                    "cut short or another file: was it copied or written while the run was stopped?). Give "
                    "another checkpoint, e.g. the run's checkpoints/last.ckpt.")
    trainer = config.get("trainer") or {}
    precision = trainer.get("precision")
    if precision is not None:
        try:
            check_precision(precision)
        except ValueError as error:
            return f"--trainer.precision={precision}: {error}"
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in GPU_ACCELERATORS and not torch.cuda.is_available():
        return (f"--trainer.accelerator={accelerator}: torch finds no CUDA GPU on this machine "
                "(torch.cuda.is_available() is False). Use --trainer.accelerator=auto (the example configs' "
                "setting: a GPU where there is one) or cpu.")
    return None


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
        # the model as given, before LightningCLI replaces it by a checkpoint's hyperparameters
        self.dfc_given_model = copy.deepcopy(self.config[subcommand].get("model")) if subcommand == "fit" else None
        if subcommand:
            problem = check_run_arguments(self.config[subcommand])
            if problem is not None:
                self.parser.exit(2, f"{self.parser.prog}: error: {problem}\n")
        if not subcommand or self.config[subcommand].get("ckpt_path") != "last":
            return
        try:
            path = resolve_last_checkpoint(self.config[subcommand]["trainer"])
        except FileNotFoundError as error:
            self.parser.exit(2, f"{self.parser.prog}: error: {error}\n")
        if path is not None:
            self.config[subcommand]["ckpt_path"] = path
            sys.stderr.write(f"{self.parser.prog}: --ckpt_path last: resuming from {path}\n")

    def before_instantiate_classes(self) -> None:
        """A resumed fit (``fit --config ... --ckpt_path ...``) builds the model as the command
        line and config give it. LightningCLI would build it from the checkpoint's hyperparameters
        instead, and silently drop every changed setting; the module's resume check then names
        each change and refuses it, unless ``resume_with_changes`` (see ``shell.resume.check_resume``),
        and the run's saved ``config.yaml`` holds what it ran with. ``test``, ``validate`` and
        ``predict`` keep LightningCLI's rule: there the checkpoint's model is the one asked for."""
        subcommand = self.config.get("subcommand")
        given = getattr(self, "dfc_given_model", None)
        if subcommand == "fit" and self.config[subcommand].get("ckpt_path") and given is not None and \
                given.get("class_path"):
            self.config[subcommand]["model"] = given

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
        parser_class=DFCArgumentParser,
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
    except ResumeError as error:  # fit --ckpt_path with settings that differ from the checkpoint's
        if os.environ.get(TRACEBACK_ENV):
            raise
        sys.stderr.write(f"lightning-dfc: error: {error}\n(set {TRACEBACK_ENV}=1 for the full traceback)\n")
        raise SystemExit(2) from None
    except DataNotFoundError as error:  # e.g. the main job on a machine without MNIST or internet
        if os.environ.get(TRACEBACK_ENV):
            raise
        sys.stderr.write(f"lightning-dfc: error: {error.short}\n(set {TRACEBACK_ENV}=1 for the full traceback)\n")
        raise SystemExit(2) from None
