"""Audit of the example configs against the published runs, with the authors' own parsers.

Not run by CI (it needs the authors' code). For every ``examples/<name>.yaml`` this script finds
the published source of the run, lets the authors' own code turn it into a config, maps that
config with ``tests/reference/authors.py`` (the mapping ``tests/reference/test_reference.py`` checks
numerically) and records the result in ``tests/reference/published_configs.json``, which
``tests/reference/test_published_configs.py`` compares with the example configs. It also prints, per
example, a table: authors' flag (its value on the command line, or the parser's default when the
command leaves it out, and the value after their post-processing) -> our field -> our value.

    PYTHONPATH=/work/ext/pydeps .venv/bin/python tests/reference/audit_configs.py \\
        --dfc-repo /work/ext/deep_feedback_control --strong-repo /work/ext/strong_dfc

(the checkouts at the commits pinned in ``make_reference.py``; ``--no-table`` skips the tables,
``--out`` writes the JSON elsewhere). The sources:

* meulemansalex/deep_feedback_control (the DFC paper): the Table 1 configs
  ``configs/configs_{mnist,fmnist,mnist_auto,mnist_train}/*.py`` (a dict ``config``, turned into a
  command line by ``run_config._override_cmd_arg`` as ``run_config.py`` does) and the Fig. 3
  pipelines ``configs/toy_experiments/configs_fig3/config_*.py`` (``config_fixed`` plus one entry
  of ``config_collection``, combined by ``run_pipeline._override_cmd_arg`` as ``run_pipeline.py``
  does); parsed by ``utils/args.py::parse_cmd_arguments``.
* mariacer/strong_dfc: the commands printed in ``dfc/EXPERIMENTS.rst`` (shell-split as a shell
  would), with the network type of the script they run; parsed by
  ``dfc/utils/args.py::parse_cmd_arguments``. Flags a command leaves out take the parser's
  defaults (e.g. ``--adam_beta2``: 0.99).

Each code base runs in its own process (both have top-level packages ``utils``, ``networks``,
``main``), with ``PYTHONDONTWRITEBYTECODE`` so that nothing is written into their checkouts; their
parsers' output folders go to temporary directories. The provenance of every mapped field (which
of the authors' flags it depends on) is found by perturbing each parsed value in turn and seeing
which of our fields change; a flag whose every perturbation makes the mapping refuse is listed as
a requirement instead.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from authors import dfc_paper_settings, network_settings, strong_dfc_settings  # noqa: E402
from make_reference import PINNED, check_commit, config_dict, install_shims  # noqa: E402

REPO = HERE.parents[1]
EXAMPLES = REPO / "examples"
JSON_PATH = HERE / "published_configs.json"
REPOS = {"deep_feedback_control": "meulemansalex/deep_feedback_control", "strong_dfc": "mariacer/strong_dfc"}
TMP = "<tmp>"  # the parsers' output folder, in argv and config (it changes from run to run)

# ---------------------------------------------------------------------------------------------
# which published source each example is

# deep_feedback_control Table 1 configs: our task prefix -> (config folder, module prefix)
DFC_TASKS = {
    "mnist": ("configs_mnist", "mnist"),
    "fmnist": ("configs_fmnist", "fmnist"),
    "mnist_autoencoder": ("configs_mnist_auto", "mnist_auto"),
    "mnist_train": ("configs_mnist_train", "mnist_train"),
}
# our variant -> the config file's suffix
DFC_VARIANT_FILES = {
    "bp": "bp", "dfa": "dfa", "dfc": "dfc", "dfc_ss": "dfc_ss", "dfc_ssa": "dfc_ssa",
    "dfc_fixed": "fixed_dfc", "dfc_ss_fixed": "fixed_dfc_ss", "dfc_ssa_fixed": "fixed_dfc_ssa",
}
# Fig. 3 (student-teacher): our variant -> (pipeline config, entry of its config_collection)
TOY_SOURCES = {
    "dfc": ("config_dfc", "TrainFB_RandomInit_Pretrain"),
    "dfc_fixed": ("config_dfc", "FreezeFB_WeightProduct"),
    "dfc_ss": ("config_dfc_ss", "TrainFB_RandomInit_Pretrain"),
    "dfc_ss_fixed": ("config_dfc_ss", "FreezeFB_WeightProduct"),
    "dfc_ssa": ("config_dfc_ssa", "TrainFB_RandomInit_Pretrain"),
    "dfc_ssa_fixed": ("config_dfc_ssa", "FreezeFB_WeightProduct"),
    "dfa": ("config_dfa", "DFA"),
}
# strong_dfc EXPERIMENTS.rst: example -> (dataset section, method section[, flags added to the
# printed command: a published command with one switch changed, named in the entry's source])
STRONG_SOURCES = {
    "mnist_dfc_noisy_dynamics": ("MNIST", "DFC", ("--noisy_dynamics",)),
    "mnist_strong_dfc": ("MNIST", "Strong-DFC"),
    "mnist_strong_dfc_ss": ("MNIST", "Strong-DFC (2-phase)"),
    "fmnist_strong_dfc": ("Fashion-MNIST", "Strong-DFC"),
    "fmnist_strong_dfc_ss": ("Fashion-MNIST", "Strong-DFC (2-phase)"),
}
# our reconstructions: example -> what they are made of (see reconstruct_dfc_noise)
RECONSTRUCTIONS = {"mnist_dfc_noise": ("mnist_dfc", "mnist_strong_dfc")}

# run-level settings kept from the parsed config
RUN_KEYS = ("epochs", "batch_size", "dataset")  # and float64 (see entry)
TOY_RUN_KEYS = ("num_train", "num_val", "num_test")


def dfc_paper_sources() -> dict[str, tuple[str, str | None]]:
    """example -> (config module, config_collection entry or None)."""
    sources: dict[str, tuple[str, str | None]] = {}
    for task, (folder, prefix) in DFC_TASKS.items():
        for variant, suffix in DFC_VARIANT_FILES.items():
            sources[f"{task}_{variant}"] = (f"configs.{folder}.{prefix}_{suffix}", None)
    for variant, (module, entry) in TOY_SOURCES.items():
        sources[f"toy_{variant}"] = (f"configs.toy_experiments.configs_fig3.{module}", entry)
    return sources


# ---------------------------------------------------------------------------------------------
# helpers (the children run them after importing torch)


def argv_values(argv: list[str]) -> dict[str, Any]:
    """``--key=value`` / ``--flag`` -> {key: value string or True} (the last occurrence wins, as
    in argparse)."""
    values: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        values[key] = value if eq else True
    return values


def scrub(value: Any, tmp: str) -> Any:
    """Replace the temporary output folder by a placeholder (a reproducible JSON)."""
    if isinstance(value, str) and tmp:
        return value.replace(tmp, TMP)
    if isinstance(value, list):
        return [scrub(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, tmp) for k, v in value.items()}
    return value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


# other values of the parsers' choices, for string settings whose unknown values the mapping refuses
ALTERNATIVES = {
    "Adam": ["SGD"], "SGD": ["Adam"], "BP": ["DFA"], "DFA": ["BP"],
    "DFC_single_phase": ["DFC"], "mnist": ["student_teacher"], "fashion_mnist": ["student_teacher"],
    "mnist_autoencoder": ["mnist"], "student_teacher": ["mnist"],
}


def perturbations(value: Any) -> list[Any]:
    """Values near (or unlike) ``value`` that any mapping reading it would map differently."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        if not value:
            return [2.0 ** -10, 1.0]
        return [value * (1 + 2.0 ** -10), value * (1 - 2.0 ** -10), value + 0.5, value + 1.0]  # + 1: int(...)
    if isinstance(value, str):
        return ["__audit__", value + ",tanh", *ALTERNATIVES.get(value, [])]
    if isinstance(value, list) and value:
        out = []
        for i, item in enumerate(value):
            for new in perturbations(item):
                out.append(value[:i] + [new] + value[i + 1:])
        return out + [value + value[-1:]]
    return []


def provenance(mapping, config: dict[str, Any]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """(our flattened field -> the authors' keys it depends on, the keys the mapping requires:
    every perturbation of them raises)."""
    base = flatten(mapping(config))
    sources: dict[str, list[str]] = {}
    required: dict[str, Any] = {}
    def changes(keys: list[str]) -> tuple[int, int, set[str]]:
        tried = raised = 0
        changed: set[str] = set()
        for new in perturbations(config[keys[0]]):
            tried += 1
            trial = dict(config)
            trial.update({k: new for k in keys})
            try:
                out = flatten(mapping(trial))
            except Exception:  # noqa: BLE001 (the mapping refuses it: NotImplementedError, or breaks)
                raised += 1
                continue
            # fields present either way whose value moved (a structural change, e.g. Adam -> SGD
            # dropping betas, is not attributed to every field it removes)
            changed |= {f for f in base.keys() & out.keys() if not same(base[f], out[f])}
        return tried, raised, changed

    for key in sorted(config):
        tried, raised, changed = changes([key])
        if tried and raised == tried:
            # a copy the parser made (sigma_output_fb <- sigma_fb) that the mapping needs to agree:
            # perturb the key together with the keys of the same value
            twins = [k for k in sorted(config) if k != key and type(config[k]) is type(config[key])
                     and config[k] == config[key]]
            for twin in twins:
                joint_tried, joint_raised, joint_changed = changes([key, twin])
                if joint_raised < joint_tried:
                    raised, changed = joint_raised, changed | joint_changed
        if tried and raised == tried:
            required[key] = config[key]
        for field in changed:
            sources.setdefault(field, []).append(key)
    return sources, required


def same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def parse_quietly(parse) -> tuple[dict[str, Any], list[str]]:
    """(the parsed config as a dict, what the parser printed or warned, but for where it logs)."""
    import contextlib
    import io
    import warnings

    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        config = config_dict(parse())
    lines = [line.strip() for line in printed.getvalue().splitlines()] + [str(w.message) for w in caught]
    return config, [line for line in lines if line and not line.startswith("Logging at")]


def entry(*, source: dict[str, Any], argv: list[str], config: dict[str, Any], settings: dict[str, Any],
          network: dict[str, Any], provenance_: dict[str, list[str]], required: dict[str, Any],
          notes: list[str], tmp: str) -> dict[str, Any]:
    run = {k: config[k] for k in RUN_KEYS}
    if config["dataset"] == "student_teacher":
        run.update({k: config[k] for k in TOY_RUN_KEYS})
    # deep_feedback_control: double_precision = not --single_precision; strong_dfc: --double_precision
    run["float64"] = config["double_precision"]
    return {
        "status": "published",
        "source": {**source, "argv": scrub(argv, tmp)},
        "argv_values": scrub(argv_values(argv), tmp),
        "parsed_config": scrub(config, tmp),
        "settings": settings,
        "network": network,
        "run": run,
        "provenance": {k: sorted(v) for k, v in sorted(provenance_.items())},
        "required": required,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------
# deep_feedback_control (child process)


def audit_dfc_paper(repo: Path) -> dict[str, Any]:
    import torch

    install_shims(torch)
    sys.path.insert(0, str(repo))
    run_config = importlib.import_module("run_config")
    run_pipeline = importlib.import_module("run_pipeline")
    args_mod = importlib.import_module("utils.args")
    results: dict[str, Any] = {}
    oddities: list[dict[str, str]] = []
    for name, (module_name, collection_entry) in sorted(dfc_paper_sources().items()):
        module = importlib.import_module(module_name)
        rel = module_name.replace(".", "/") + ".py"
        notes: list[str] = []
        tmp = tempfile.mkdtemp(prefix="out_", dir=os.getcwd())  # removed with the work folder
        if collection_entry is None:
            if hasattr(module, "config"):
                config = dict(module.config)
            else:  # configs_mnist_train/mnist_train_fixed_dfc_ssa.py: `onfig = {` (a typo)
                names = [k for k, v in vars(module).items() if isinstance(v, dict) and not k.startswith("_")]
                if names != ["onfig"]:
                    raise SystemExit(f"{rel}: no `config` dict (found {names})")
                config = dict(module.onfig)
                note = (f"{rel} defines `onfig` (a typo) instead of `config`: `run_config.py "
                        f"--config_module={module_name}` fails with AttributeError. Audited as if the "
                        "dict were named `config` (its values, unchanged).")
                notes.append(note)
                oddities.append({"example": name, "oddity": "onfig typo", "detail": note})
            config["out_dir"] = tmp
            run_config._override_cmd_arg(config)  # their config -> command line conversion
            how = "run_config._override_cmd_arg(config); utils.args.parse_cmd_arguments(argv)"
            source = {"repo": REPOS["deep_feedback_control"], "commit": PINNED["deep_feedback_control"],
                      "file": rel, "config_module": module_name, "how": how}
        else:
            collection = copy.deepcopy(module.config_collection)
            fixed = copy.deepcopy(module.config_fixed)
            config = collection[collection_entry]
            config["out_dir"] = tmp  # run_pipeline.run sets it per entry
            run_pipeline._override_cmd_arg(config, fixed)  # config_fixed + the entry (the entry wins)
            how = ("run_pipeline._override_cmd_arg(config_collection[entry], config_fixed); "
                   "utils.args.parse_cmd_arguments(argv)")
            source = {"repo": REPOS["deep_feedback_control"], "commit": PINNED["deep_feedback_control"],
                      "file": rel, "config_module": module_name, "config_collection_entry": collection_entry,
                      "how": how}
        argv = sys.argv[1:]
        parsed, messages = parse_quietly(lambda: args_mod.parse_cmd_arguments(argv=argv))
        notes += [f"their parser: {m}" for m in messages]
        settings = dfc_paper_settings(parsed)
        network = network_settings(parsed)
        prov, required = provenance(dfc_paper_settings, parsed)
        net_prov, _ = provenance(network_settings, parsed)
        prov.update({f"network.{k}": v for k, v in net_prov.items()})
        if parsed.get("gn_damping_hpsearch"):
            note = (f"{rel} sets gn_damping_hpsearch=True: the authors' utils/train.py::train() then returns "
                    "after epoch 3 (a search over the GN damping), so the published config trains 3 of its "
                    f"{parsed['epochs']} epochs. The example trains all {parsed['epochs']} epochs normally.")
            notes.append(note)
            oddities.append({"example": name, "oddity": "gn_damping_hpsearch", "detail": note})
        results[name] = entry(source=source, argv=argv, config=parsed, settings=settings, network=network,
                              provenance_=prov, required=required, notes=notes, tmp=tmp)
    return {"examples": results, "oddities": oddities}


# ---------------------------------------------------------------------------------------------
# strong_dfc (child process)


def experiments_commands(text: str) -> dict[tuple[str, str], str]:
    """EXPERIMENTS.rst -> {(dataset section, method section): command line after ``$``}."""
    lines = text.splitlines()
    section = method = None
    commands: dict[tuple[str, str], str] = {}
    for i, line in enumerate(lines):
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and underline and set(underline) == {"-"} and len(underline) >= len(line.strip()):
            section, method = line.strip(), None
        elif line.strip() and underline and set(underline) == {"^"} and len(underline) >= len(line.strip()):
            method = line.strip()
        elif line.strip().startswith("$ python"):
            if section is None or method is None or (section, method) in commands:
                raise SystemExit(f"EXPERIMENTS.rst line {i + 1}: a command outside a section, or a second one")
            commands[(section, method)] = line.strip()[1:].strip()
    return commands


def audit_strong(repo: Path) -> dict[str, Any]:
    import torch

    install_shims(torch)
    sys.path.insert(0, str(repo / "dfc"))
    args_mod = importlib.import_module("utils.args")
    commands = experiments_commands((repo / "dfc" / "EXPERIMENTS.rst").read_text())
    results: dict[str, Any] = {}
    for name, (section, method, *rest) in sorted(STRONG_SOURCES.items()):
        key, added = (section, method), (rest[0] if rest else ())
        words = shlex.split(commands[key])  # as a shell would: --optimizer="Adam" -> --optimizer=Adam
        script = words[1]
        match = re.search(r"run\(network_type='(\w+)'\)", (repo / "dfc" / script).read_text())
        if match is None:
            raise SystemExit(f"{script}: no run(network_type=...) call")
        network_type = match.group(1)
        published = words[2:] + list(added)
        tmp = tempfile.mkdtemp(prefix="out_", dir=os.getcwd())
        extra = [f"--out_dir={tmp}/out", "--no_plots"]  # their parser creates out_dir, which must be new
        parsed, messages = parse_quietly(
            lambda: args_mod.parse_cmd_arguments(network_type=network_type, argv=published + extra))

        def mapping(c):  # the script's network type travels as a pseudo-flag, to trace it too
            return strong_dfc_settings({k: v for k, v in c.items() if k != "network_type"}, c["network_type"])

        settings = strong_dfc_settings(parsed, network_type)
        network = network_settings(parsed)
        prov, required = provenance(mapping, {**parsed, "network_type": network_type})
        net_prov, _ = provenance(network_settings, parsed)
        prov.update({f"network.{k}": v for k, v in net_prov.items()})
        source = {"repo": REPOS["strong_dfc"], "commit": PINNED["strong_dfc"], "file": "dfc/EXPERIMENTS.rst",
                  "section": f"{key[0]} / {key[1]}", "script": f"dfc/{script}", "network_type": network_type,
                  "published_command": commands[key],
                  "how": "shlex.split(command); utils.args.parse_cmd_arguments(network_type, argv + --out_dir, "
                         "--no_plots)"}
        if added:
            source["added_flags"] = list(added)
        notes = [f"their parser: {m}" for m in messages]
        if added:
            notes.append("not a published run: the printed command with " + ", ".join(added) + " added (the "
                         "Strong-DFC paper's 'DFC (noise)' row has no published command)")
        left_out = [k for k in ("adam_beta1", "adam_beta2", "adam_beta1_fb", "adam_beta2_fb")
                    if k not in argv_values(published)]
        if left_out:
            notes.append("the command leaves out " + ", ".join(f"--{k}" for k in left_out) + ": the parser's "
                         "default " + ", ".join(f"{k}={parsed[k]}" for k in left_out) + " applies")
        item = entry(source=source, argv=published + extra, config=parsed, settings=settings, network=network,
                     provenance_=prov, required=required, notes=notes, tmp=tmp)
        item["argv_values"]["network_type"] = f"{network_type} (the script dfc/{script})"
        results[name] = item
    return {"examples": results, "oddities": []}


# ---------------------------------------------------------------------------------------------
# the parent: reconstructions, the JSON, the tables


def reconstruct_dfc_noise(examples: dict[str, Any]) -> dict[str, Any]:
    """``mnist_dfc_noise``: no published command. The DFC paper's MNIST DFC config with the noise
    of the Strong-DFC single-phase MNIST command (low-pass filtered: sigma, sigma_output,
    tau_noise), and its treatment of non-converged samples (included)."""
    base_name, noise_name = RECONSTRUCTIONS["mnist_dfc_noise"]
    base, noise = examples[base_name], examples[noise_name]
    settings = copy.deepcopy(base["settings"])
    taken = {}
    for key in ("sigma", "sigma_output", "tau_noise"):
        settings["dynamics"][key] = taken[f"dynamics.{key}"] = noise["settings"]["dynamics"][key]
    key = "exclude_non_converged"
    settings["updates"][key] = taken[f"updates.{key}"] = noise["settings"]["updates"][key]
    prov = dict(base["provenance"])
    for field in taken:
        prov[field] = [f"{noise_name}: {k}" for k in noise["provenance"].get(field, [])]
    return {
        "status": "reconstruction",
        "source": {"reconstruction_of": "the 'DFC (noise)' runs of the Strong-DFC paper (no published command)",
                   "base": {"example": base_name, **{k: base["source"][k] for k in ("repo", "commit", "file")}},
                   "noise": {"example": noise_name,
                             **{k: noise["source"][k] for k in ("repo", "commit", "file", "section")}},
                   "taken_from_noise": sorted(taken)},
        "settings": settings,
        "network": copy.deepcopy(base["network"]),
        "run": copy.deepcopy(base["run"]),
        "provenance": prov,
        "required": base["required"],
        "notes": [f"our reconstruction: {base_name}'s published config, with "
                  + ", ".join(f"{k} = {v!r}" for k, v in taken.items())
                  + f" from {noise_name}'s published command (with noise the 1e-5 fixed-point test never "
                  "passes, so excluding non-converged samples would drop every sample)"],
    }


def run_child(kind: str, repo: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "result.json"
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run([sys.executable, __file__, "--child", kind, "--repo", str(repo), "--child-out", str(out)],
                       check=True, cwd=work, env=env)
        return json.loads(out.read_text())


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def table(name: str, item: dict[str, Any], examples: dict[str, Any]) -> str:
    source = item.get("source", {})
    where = source.get("section") or source.get("file") or ""
    if "config_collection_entry" in source:
        where += f" [{source['config_collection_entry']}]"
    lines = [f"== {name}: {item['status']}" + (f" ({source.get('repo', '')} {where})" if where else "")]
    for note in item.get("notes", []):
        lines.append(f"   note: {note}")
    base = examples[source["base"]["example"]] if item["status"] == "reconstruction" else item
    parsed, given = base["parsed_config"], base["argv_values"]
    rows = []
    fields = flatten({"network": item["network"], **item["settings"], "run": item["run"]})
    for field, value in fields.items():
        keys = item["provenance"].get(field, [])
        if field.startswith("run."):
            keys = [{"float64": "double_precision"}.get(field[4:], field[4:])]
        described = []
        for key in keys:
            if ":" in key:  # a reconstruction's borrowed field: "<example>: <flag>"
                other, flag = key.split(": ")
                raw = examples[other]["argv_values"].get(flag)
                described.append(f"{other}: " + (f"--{flag}={raw}" if raw is not None else
                                                  f"{flag} (default) [parsed "
                                                  f"{fmt(examples[other]['parsed_config'][flag])}]"))
                continue
            shown = fmt(parsed.get(key))
            if key not in parsed:  # network_type: the script's
                described.append(f"{key}={given.get(key, '?')}")
            elif key in given:
                raw = given[key]
                described.append(f"--{key}" + ("" if raw is True else f"={raw}")
                                 + ("" if raw is True or str(raw) == shown else f" [parsed {shown}]"))
            else:
                described.append(f"{key} (default) [parsed {shown}]")
        rows.append((", ".join(described) or "(no one flag: fixed by the code/mapping)", field, fmt(value)))
    width = max(len(r[0]) for r in rows)
    width_field = max(len(r[1]) for r in rows)
    for flags, field, value in rows:
        lines.append(f"   {flags:<{width}} -> {field:<{width_field}} = {value}")
    if item.get("required"):
        lines.append("   requires (other values refused by the mapping): "
                     + ", ".join(f"{k}={fmt(v)}" for k, v in sorted(item["required"].items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dfc-repo", type=Path, help="checkout of meulemansalex/deep_feedback_control")
    parser.add_argument("--strong-repo", type=Path, help="checkout of mariacer/strong_dfc")
    parser.add_argument("--out", type=Path, default=JSON_PATH)
    parser.add_argument("--no-table", action="store_true", help="do not print the mapping tables")
    parser.add_argument("--child", choices=["dfc", "strong"], help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = (audit_dfc_paper if args.child == "dfc" else audit_strong)(args.repo.resolve())
        args.child_out.write_text(json.dumps(result))
        return
    if args.dfc_repo is None or args.strong_repo is None:
        parser.error("--dfc-repo and --strong-repo are required")
    check_commit(args.dfc_repo, "deep_feedback_control")
    check_commit(args.strong_repo, "strong_dfc")
    examples: dict[str, Any] = {}
    oddities: list[dict[str, str]] = []
    for kind, repo in (("dfc", args.dfc_repo.resolve()), ("strong", args.strong_repo.resolve())):
        result = run_child(kind, repo)
        examples.update(result["examples"])
        oddities += result["oddities"]
    for name in RECONSTRUCTIONS:
        examples[name] = reconstruct_dfc_noise(examples)
        oddities.append({"example": name, "oddity": "reconstruction", "detail": examples[name]["notes"][0]})
    ours = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
    for name in ours:
        if name not in examples:
            examples[name] = {"status": "no_published_source", "notes": ["no published config or command"]}
            oddities.append({"example": name, "oddity": "no published source", "detail": ""})
    unused = sorted(set(examples) - set(ours))
    document = {
        "about": "The published runs behind examples/*.yaml, as the authors' own parsers read them, mapped by "
                 "tests/reference/authors.py. Written by tests/reference/audit_configs.py (see its docstring); "
                 "checked against the examples by tests/reference/test_published_configs.py.",
        "pinned_commits": {REPOS[k]: v for k, v in PINNED.items()},
        "oddities": oddities,
        "sources_without_example": unused,
        "examples": {k: examples[k] for k in sorted(examples)},
    }
    args.out.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    if not args.no_table:
        for name in sorted(examples):
            if examples[name]["status"] != "no_published_source":
                print(table(name, examples[name], examples) + "\n")
        for odd in oddities:
            print(f"oddity: {odd['example']}: {odd['oddity']}" + (f": {odd['detail']}" if odd["detail"] else ""))
    print(f"wrote {args.out} ({len(examples)} examples)")


if __name__ == "__main__":
    main()
