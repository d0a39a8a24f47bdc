"""The example configs are the published runs, as the authors' own parsers read them.

``tests/reference/published_configs.json`` (written by ``tests/reference/audit_configs.py``, not by
CI) holds, for every ``examples/<name>.yaml``, the published config or command, what the authors'
parser made of it and what ``tests/reference/authors.py`` maps that to: the keyword arguments of
:class:`lightning_dfc.DFCModule` and the run-level settings. This test builds each example the
way ``lightning-dfc fit --config`` does (:func:`lightning_dfc.shell.cli.build_cli`) and compares the
*resolved* settings with that record: variant, loss, target stepsize (where it matters: not for
Strong-DFC, whose target is the label), network, every field of the wake and sleep simulations,
of the feedback and update settings, every optimizer's class and resolved arguments, epochs,
batch size, dataset and precision. Floats must agree to a relative 1e-12 (the full published
values). A field the record does not give is compared with the library default where the
mapping relies on that default (see ``UNCHECKED`` for the fields it does not rely on).

The numerics are not hyperparameters: every example runs the library's ``fast`` numerics and
holds the published hyperparameters; built with ``--model.init_args.numerics=exact`` it is the
published run itself, numerics levers included (the record's ``numerics``, ``exact``).

It imports nothing of the authors' code: only the JSON and the YAML files are read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_dfc import DFCModule
from lightning_dfc.shell.cli import build_cli
from lightning_dfc.core.config import SimulationConfig
from lightning_dfc.core.numerics import LEVERS, resolve_numerics
from lightning_dfc.shell.data import FashionMNISTDataModule, MNISTDataModule, StudentTeacherDataModule
from lightning_dfc.core.config import as_optimizer
from lightning_dfc.core.methods import METHODS

REPO = Path(__file__).resolve().parents[2]
RECORD = json.loads((REPO / "tests" / "reference" / "published_configs.json").read_text())
PUBLISHED: dict[str, dict[str, Any]] = RECORD["examples"]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
IDS = [p.stem for p in EXAMPLES]
REL = 1e-12

# Library-only fields the mapping does not rely on: the divergence guard; compile (a faster
# kernel for the same equations); and the early stop's tolerance and interval wherever the
# simulation does not stop early (the numerics say early_stop: false, or the simulation is noisy:
# noisy simulations never stop early and always accumulate every step, whatever early_stop and
# outer_every say, see lightning_dfc/dynamics.py).
UNCHECKED = {"updates": {"max_diverged_batches"}, "simulation": {"compile"}}
NOISY_UNUSED = {"early_stop", "tolerance", "check_every"}
DATASETS = {"mnist": (MNISTDataModule, False), "fashion_mnist": (FashionMNISTDataModule, False),
            "mnist_autoencoder": (MNISTDataModule, True), "student_teacher": (StudentTeacherDataModule, None)}

pytestmark = pytest.mark.usefixtures("one_thread", "cli_isolation")


def same(actual: Any, expected: Any) -> bool:
    """Equal, floats to a relative 1e-12 (0 exactly), and of the kind the record gives."""
    if isinstance(expected, bool) or expected is None:
        return actual is expected
    if isinstance(expected, str):
        return isinstance(actual, str) and actual == expected
    if isinstance(expected, (int, float)):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        if isinstance(expected, int) and not isinstance(actual, int):
            return False
        return math.isclose(actual, expected, rel_tol=REL, abs_tol=0.0)
    if isinstance(expected, (list, tuple)):
        return (isinstance(actual, (list, tuple)) and len(actual) == len(expected)
                and all(same(a, e) for a, e in zip(actual, expected)))
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and actual.keys() == expected.keys()
                and all(same(actual[k], expected[k]) for k in expected))
    return actual == expected


class Diff:
    """Collects every mismatch of one example (so that one run lists them all)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def check(self, where: str, actual: Any, expected: Any) -> None:
        if not same(actual, expected):
            self.lines.append(f"{where}: example {actual!r} != published {expected!r}")


def compare_fields(diff: Diff, where: str, actual: Any, expected: dict[str, Any], skip: set[str]) -> None:
    """Every field of the dataclass ``actual``: the record's value, else the library default."""
    unknown = set(expected) - {f.name for f in dataclasses.fields(actual)}
    if unknown:
        diff.lines.append(f"{where}: the record has fields our {type(actual).__name__} lacks: {sorted(unknown)}")
    for field in dataclasses.fields(actual):
        if field.name == "simulation":  # FeedbackConfig's: compared by compare_simulation
            continue
        if field.name in expected:
            diff.check(f"{where}.{field.name}", getattr(actual, field.name), expected[field.name])
        elif field.name not in skip:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            diff.check(f"{where}.{field.name} (library default)", getattr(actual, field.name), default)


def compare_simulation(diff: Diff, where: str, actual: SimulationConfig, expected: dict[str, Any],
                       numerics: str | None) -> None:
    """The physics of a simulation; with ``numerics`` (a preset's name) its levers too: those of
    the preset, since the record leaves them to it."""
    skip = set(UNCHECKED["simulation"]) | set(LEVERS)
    compare_fields(diff, where, actual, expected, skip)
    if numerics is None:
        return
    preset = resolve_numerics(numerics)
    unused = NOISY_UNUSED if actual.noisy else ({"tolerance", "check_every"} if not preset.early_stop else set())
    for lever in LEVERS:
        if lever not in unused:
            diff.check(f"{where}.{lever} (numerics {numerics})", getattr(actual, lever), getattr(preset, lever))


def resolved_optimizer(factory: Any) -> torch.optim.Optimizer:
    return factory([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])


def as_float(value: Any) -> Any:
    """Optimizer arguments: 0 and 0.0 are the same momentum (torch's defaults mix them)."""
    if isinstance(value, (list, tuple)):
        return [as_float(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def compare_optimizer(diff: Diff, where: str, factory: Any, expected: dict[str, Any]) -> None:
    """Class and every resolved argument (``optimizer.defaults``: lr, betas, eps, momentum,
    weight_decay, ... whether given or defaulted), against the record's optimizer built alike."""
    ours, theirs = resolved_optimizer(factory), resolved_optimizer(as_optimizer(expected))
    diff.check(f"{where} class", type(ours).__qualname__, type(theirs).__qualname__)
    if type(ours) is type(theirs):
        for key in sorted(ours.defaults.keys() | theirs.defaults.keys()):
            diff.check(f"{where}.{key}", as_float(ours.defaults.get(key)), as_float(theirs.defaults.get(key)))


def mismatches(cli: Any, published: dict[str, Any], numerics: bool = False) -> list[str]:
    """Everything in which an example (built by the CLI) differs from its record. ``numerics``:
    the example was built with the record's numerics and must then equal it in them too;
    otherwise it must run the library's ``fast`` numerics."""
    diff = Diff()
    model, settings = cli.model, published["settings"]
    if numerics:
        diff.check("numerics", model.dfc_numerics.name, settings["numerics"])
    elif "dynamics" in settings:
        diff.check("numerics (examples run the library's)", model.dfc_numerics.name, "fast")
    preset = settings["numerics"] if numerics else None
    assert isinstance(model, DFCModule)
    variant = settings["variant"]
    spec = METHODS[variant]
    diff.check("variant", model.dfc_variant, variant)
    diff.check("loss", model.dfc_loss, settings["loss"])
    if not spec.strong:  # Strong-DFC's target is the label: lambda is unused
        diff.check("target_stepsize", model.dfc_target_stepsize, settings["target_stepsize"])

    network = published["network"]
    net = model.dfc_net
    diff.check("network.sizes", net.sizes, network["sizes"])
    hidden = network["activation"]
    hidden = [hidden] * (len(network["sizes"]) - 2) if isinstance(hidden, str) else hidden
    diff.check("network.activations", [a.name for a in net.activations], [*hidden, network["output_activation"]])
    diff.check("network.bias", all(lin.bias is not None for lin in net.layers), network["bias"])

    if "dynamics" in settings:
        compare_simulation(diff, "dynamics", model.dfc_dynamics, settings["dynamics"], preset)
    updates = settings["updates"]
    skip = set(UNCHECKED["updates"])
    if "dynamics" not in settings:  # BP, DFA: no simulation, no convergence test
        skip |= {"exclude_non_converged", "convergence_threshold", "convergence_epsilon"}
    if not spec.strong:
        skip.add("target_class_value")
    compare_fields(diff, "updates", model.dfc_updates, {k: v for k, v in updates.items() if k != "normalize_lr"},
                   skip | {"normalize_lr"})
    diff.check("updates.normalize_lr (resolved)", model.dfc_normalize_lr, updates["normalize_lr"])
    diff.check("updates.clip_grouping (resolved)", model.dfc_forward_clip_grouping,
               updates.get("clip_grouping", model.dfc_forward_clip_grouping))
    if "feedback" in settings:
        feedback = settings["feedback"]
        compare_fields(diff, "feedback", model.dfc_feedback_config, feedback, set())
        compare_simulation(diff, "feedback.simulation", model.dfc_feedback_config.simulation, feedback["simulation"],
                           preset)
    for kind in ("forward", "feedback", "pretrain"):
        if f"{kind}_optimizer" in settings:
            compare_optimizer(diff, f"{kind}_optimizer", model._dfc_optimizers[kind], settings[f"{kind}_optimizer"])

    run = published["run"]
    diff.check("trainer.max_epochs", cli.trainer.max_epochs, run["epochs"])
    diff.check("trainer.precision", cli.trainer.precision, "64-true" if run["float64"] else "32-true")
    data = cli.datamodule
    diff.check("data.batch_size", data.batch_size, run["batch_size"])
    cls, autoencoder = DATASETS[run["dataset"]]
    diff.check("data class", type(data).__name__, cls.__name__)
    if autoencoder is not None:
        diff.check("data.autoencoder", data.autoencoder, autoencoder)
    for key in ("num_train", "num_val", "num_test"):
        if key in run:
            diff.check(f"data.{key}", data.hparams[key], run[key])
    return diff.lines


def build(path: Path, *extra: str) -> Any:
    return build_cli(["--config", str(path), "--trainer.logger=false", *extra], run=False)


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


# --------------------------------------------------------------------------------------------


def test_every_example_is_in_the_record() -> None:
    assert sorted(PUBLISHED) == IDS
    missing = [k for k, v in PUBLISHED.items() if v["status"] == "no_published_source"]
    assert missing == [], f"examples without a published source: {missing}"
    # the commits of the authors' code that tests/reference/test_reference.py checks our numerics against
    manifest = json.loads((REPO / "tests" / "reference" / "manifest.json").read_text())
    assert sorted(RECORD["pinned_commits"].values()) == sorted(manifest["pinned_commits"].values())


@pytest.mark.parametrize("config", EXAMPLES, ids=IDS)
def test_example_is_the_published_run(config: Path) -> None:
    published = PUBLISHED[config.stem]
    cli = build(config)
    lines = mismatches(cli, published)
    assert not lines, f"{config.name} differs from the published run:\n  " + "\n  ".join(lines)
    exact = build(config, f"--model.init_args.numerics={published['settings']['numerics']}")
    lines = mismatches(exact, published, numerics=True)
    assert not lines, f"{config.name} with the published numerics differs from the published run:\n  " + "\n  ".join(lines)

    # configs hold only what the variant uses
    init = yaml.safe_load(config.read_text())["model"]["init_args"]
    settings = published["settings"]
    for key in ("dynamics", "feedback", "feedback_optimizer", "pretrain_optimizer"):
        state = "missing" if key in settings else "unused"
        assert (key in init) == (key in settings), f"{config.name}: {key} is {state}"

    # the header says which run it is
    text = header(config)
    assert f"lightning-dfc fit --config examples/{config.name}" in text
    source = published["source"]
    if published["status"] == "reconstruction":
        assert "reconstruction" in text.lower()
    elif source["file"].endswith("EXPERIMENTS.rst"):
        assert "EXPERIMENTS.rst" in text and source["section"].split(" / ")[1] in text
        for flag in source.get("added_flags", []):  # a published command with a switch changed
            assert "not a published run" in text.lower() and flag in text
    else:
        assert source["file"].removeprefix("configs/") in text, f"{config.name}: name {source['file']}"
    if any("gn_damping_hpsearch" in note for note in published["notes"]):
        assert "gn_damping_hpsearch" in text
    if METHODS[settings["variant"]].strong:
        assert "pretrain_mode" in text


def test_the_comparison_fails_on_a_difference() -> None:
    """A changed value, a rounded float or a changed default are caught (the check can fail)."""
    path = REPO / "examples" / "mnist_strong_dfc_ss.yaml"
    cli = build(path)
    published = PUBLISHED["mnist_strong_dfc_ss"]
    assert mismatches(cli, published) == []
    for change, where in [
        (("feedback_optimizer", "init_args", "betas"), "feedback_optimizer.betas"),
        (("dynamics", "alpha"), "dynamics.alpha"),
        (("feedback", "simulation", "proactive"), "feedback.simulation.proactive"),
        (("updates", "clip_grouping"), "updates.clip_grouping"),
    ]:
        edited = copy.deepcopy(published)
        node = edited["settings"]
        for key in change[:-1]:
            node = node[key]
        value = node[change[-1]]
        node[change[-1]] = (
            [value[1], value[0]] if isinstance(value, list) else (not value) if isinstance(value, bool)
            else float(f"{value:.4g}") if isinstance(value, float) else "tensor"
        )
        lines = mismatches(cli, edited)
        assert any(line.startswith(where) for line in lines), (change, lines)
    edited = copy.deepcopy(published)
    edited["run"]["epochs"] += 1
    assert any(line.startswith("trainer.max_epochs") for line in mismatches(cli, edited))
    # the numerics: an example must run the library's; with the published numerics every lever counts
    exact = build(path, "--model.init_args.numerics=exact")
    assert mismatches(exact, published, numerics=True) == []
    assert any(line.startswith("numerics (examples") for line in mismatches(exact, published))
    assert any(line.startswith("numerics") for line in mismatches(cli, published, numerics=True))
    exact.model.dfc_dynamics.outer_every = 10  # an example that pinned a lever of its own
    assert any(line.startswith("dynamics.outer_every (numerics exact)")
               for line in mismatches(exact, published, numerics=True))
    # a field the record leaves to the library default
    cli.model.dfc_feedback_config.sigma_floor = 0.02
    assert any(line.startswith("feedback.sigma_floor") for line in mismatches(cli, published))
