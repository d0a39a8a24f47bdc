"""Figures from CSVLogger logs: the six diagnostics panels of Fig. 3 of the DFC paper, or any
logged keys.

    lightning-dfc plot lightning_logs/fig3 --output docs/figures/fig3
    lightning-dfc plot lightning_logs/toy_dfc/version_0 lightning_logs/toy_dfa/version_0 \\
        --labels DFC DFA --output fig3
    lightning-dfc plot lightning_logs/toy_dfc --metrics val_loss "diag/angle_mn/layer_*" --output mn

A *run* is a ``metrics.csv`` written by :class:`lightning.pytorch.loggers.CSVLogger`, the log
directory that holds it (``<save_dir>/<name>/<version>``), or any directory above such files
(every ``metrics.csv`` below it is a run, labelled ``<name>/<version>``, or ``<name>`` when the
names are unique). The diagnostics are those of :class:`lightning_dfc.shell.callbacks.ConditionMonitor`.

The x axis is the wake (forward-weight) epoch, counted from 1: each row's Lightning ``epoch`` is
mapped to the ``wake_epoch`` that :class:`~lightning_dfc.DFCModule` logs (pre-training epochs
map to 0; logs written before that column read ``forward_epoch + 1``); runs without either
column (a plain LightningModule) use the Lightning epoch + 1, which is the wake epoch when every
epoch is a wake epoch. Several values at one x (the sleep epochs of a
forward epoch, per-step measurements) are reduced to the last one logged, i.e. the state at the
end of that forward epoch (``reduce="mean"`` averages them instead).

matplotlib is imported only when a figure is drawn (``pip install lightning-dfc[plots]``). No
display or pyplot backend is used: figures are :class:`matplotlib.figure.Figure` objects saved
directly, so this works headless and leaves the caller's pyplot backend alone.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "FIG3_PANELS",
    "Panel",
    "Run",
    "find_runs",
    "load_run",
    "series",
    "fig3_figure",
    "run_figure",
    "plot_run_curves",
    "plot_runs",
    "plot_metrics",
    "plot_main",
]

PathLike = str | Path
X_AXES = ("wake_epoch", "epoch", "step")
X_LABELS = {"wake_epoch": "wake epoch", "epoch": "Lightning epoch", "step": "step",
            "pretrain_epoch": "pre-training epoch"}
METRICS_FILE = "metrics.csv"
IMAGE_SUFFIXES = {"png", "pdf", "svg"}


@dataclass(frozen=True)
class Panel:
    """One panel: the first of ``keys`` a run has logged is drawn for that run.

    Attributes:
        letter: panel letter of the paper's figure.
        title: panel title.
        keys: metric names, in order of preference.
        ylabel: y-axis label.
        hline: draw a horizontal reference line at this value (``None``: none).
    """

    letter: str
    title: str
    keys: tuple[str, ...]
    ylabel: str
    hline: float | None = None


#: Fig. 3 of Meulemans et al. (2021), row-major in a 2 x 3 grid.
FIG3_PANELS: tuple[Panel, ...] = (
    Panel("A", "Condition 2", ("diag/condition_2", "diag/sleep/condition_2"),
          r"$\|P_J\,Q\|_F\,/\,\|Q\|_F$"),
    Panel("B", "Alignment with MN updates", ("diag/angle_mn",), "angle (degrees)"),
    Panel("C", "Condition 1", ("diag/condition_1", "diag/sleep/condition_1"),
          "std / mean of layer norms"),
    Panel("D", "Alignment with GN updates", ("diag/angle_gn",), "angle (degrees)"),
    Panel("E", "Stability", ("diag/stability", "diag/sleep/stability"),
          "max Re eigenvalue", hline=0.0),
    Panel("F", "Alignment with DFC-SSA", ("diag/angle_ssa",), "angle (degrees)"),
)

#: What every run logs (DFCModule, and most LightningModules): the learning curves per wake epoch.
CURVE_PANELS: tuple[Panel, ...] = (
    Panel("", "Validation accuracy", ("val_acc",), "accuracy"),
    Panel("", "Validation loss", ("val_loss",), "loss"),
    Panel("", "Training loss", ("train_loss_epoch", "train_loss"), "loss"),
)
#: Condition 2 after each feedback pre-training epoch (DFCModule logs it when it pre-trains).
PRETRAIN_PANEL = Panel("", "Feedback pre-training: Condition 2", ("pretrain/condition_2",),
                       r"$\|P_J\,Q\|_F\,/\,\|Q\|_F$")
#: What an empty diagnostics panel says: which callback logs it, and how to add it.
DIAGNOSTICS_MISSING = ("not logged: add the ConditionMonitor callback\n"
                       "(trainer.callbacks: class_path lightning_dfc.shell.callbacks.ConditionMonitor)")

FIG3_SIZE = (13.0, 7.5)  # inches, at FIG_DPI
FIG_DPI = 150


# --------------------------------------------------------------------------------------------
# reading logs


@dataclass
class Run:
    """One CSVLogger run.

    Attributes:
        path: its ``metrics.csv``.
        label: legend label.
        rows: the CSV rows, as dicts of column -> value (missing values are absent).
        columns: every column of the file, in file order.
    """

    path: Path
    label: str
    rows: list[dict[str, float]] = field(default_factory=list, repr=False)
    columns: list[str] = field(default_factory=list, repr=False)

    def has(self, key: str) -> bool:
        """Whether ``key`` has at least one finite value."""
        return any(key in r and math.isfinite(r[key]) for r in self.rows)


def find_runs(path: PathLike) -> list[Path]:
    """The ``metrics.csv`` files of ``path``: the file itself, the one in the directory, or every
    one below the directory (sorted).

    Raises:
        FileNotFoundError: if ``path`` does not exist or holds no ``metrics.csv``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such run: {str(path)!r} does not exist")
    if p.is_file():
        return [p]
    if (p / METRICS_FILE).is_file():
        return [p / METRICS_FILE]
    found = sorted(p.rglob(METRICS_FILE))
    if not found and next(p.rglob("events.out.tfevents.*"), None) is not None:
        raise FileNotFoundError(
            f"{str(path)!r} holds TensorBoard event files and no {METRICS_FILE}: lightning-dfc plot reads "
            "CSVLogger logs. Look at this run with `tensorboard --logdir <it>`, or log the next run with "
            "a CSVLogger too (trainer.logger: a list of both)."
        )
    if not found:
        raise FileNotFoundError(
            f"no {METRICS_FILE} in or below {str(path)!r}: pass a CSVLogger log directory "
            f"(<save_dir>/<name>/<version>), its {METRICS_FILE}, or a folder above such runs"
        )
    return found


def _default_labels(files: Sequence[Path]) -> list[str]:
    """``<name>/<version>`` from each file's folders; just ``<name>`` when the names are unique."""
    parts = [(f.resolve().parent.parent.name, f.resolve().parent.name) for f in files]
    names = [name for name, _ in parts]
    if len(set(names)) == len(names) and all(names):
        return names
    labels = [f"{name}/{version}" if name else version for name, version in parts]
    if len(set(labels)) < len(labels):  # fall back to the whole path
        labels = [str(f.parent) for f in files]
    return labels


def _number(text: str) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:  # a non-numeric column (e.g. a hparam string): ignore it
        return None


def load_run(path: PathLike, label: str | None = None) -> Run:
    """Read one ``metrics.csv`` (see :func:`find_runs` for ``path``; it must be a single run)."""
    files = find_runs(path)
    if len(files) != 1:
        raise ValueError(f"{str(path)!r} holds {len(files)} runs; pass one of them")
    file = files[0]
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        for raw in reader:
            row = {}
            for key, text in raw.items():
                if key is None:  # a row longer than the header
                    continue
                value = _number(text)
                if value is not None:
                    row[key] = value
            rows.append(row)
        columns = list(reader.fieldnames or [])
    return Run(file, label if label is not None else _default_labels([file])[0], rows, columns)


def _load_runs(runs: Sequence[PathLike] | PathLike, labels: Sequence[str] | None) -> list[Run]:
    if isinstance(runs, (str, Path)):
        runs = [runs]
    if not runs:
        raise ValueError("no runs given")
    groups = [find_runs(r) for r in runs]
    files = [f for g in groups for f in g]
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(files):
            found = "\n  ".join(str(f) for f in files)
            raise ValueError(f"{len(labels)} labels for {len(files)} runs:\n  {found}")
    else:
        labels = _default_labels(files)
    return [load_run(f, label) for f, label in zip(files, labels)]


def series(
    run: Run, key: str, x: str = "wake_epoch", reduce: str = "last"
) -> tuple[list[float], list[float]]:
    """The values of ``key`` against ``x`` (``wake_epoch``, ``epoch`` or ``step``).

    ``wake_epoch``: each row's ``epoch`` is mapped through the run's logged ``wake_epoch``
    (Lightning's epoch + 1 when the run did not log it). Values sharing an x are reduced
    with ``reduce`` (``"last"`` or ``"mean"``; non-finite values are kept only if nothing else is
    there, so that a NaN shows up as a gap rather than vanishing).

    Returns:
        (xs, ys), sorted by x; empty if the key was never logged.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    if reduce not in ("last", "mean"):
        raise ValueError(f"reduce must be 'last' or 'mean', got {reduce!r}")
    wake: dict[float, float] = {}
    if x == "wake_epoch":
        for r in run.rows:
            if "epoch" in r and "wake_epoch" in r:
                wake[r["epoch"]] = r["wake_epoch"]
            elif "epoch" in r and "forward_epoch" in r:  # logs written before wake_epoch
                wake[r["epoch"]] = r["forward_epoch"] + 1
    grouped: dict[float, list[float]] = {}
    for r in run.rows:
        if key not in r:
            continue
        if x == "wake_epoch":
            if "epoch" in r:
                xv = wake.get(r["epoch"], r["epoch"] + 1)
            elif "wake_epoch" in r:
                xv = r["wake_epoch"]
            else:
                continue
        elif x in r:
            xv = r[x]
        else:
            continue
        grouped.setdefault(xv, []).append(r[key])
    xs, ys = [], []
    for xv in sorted(grouped):
        values = grouped[xv]
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            y = values[-1]
        elif reduce == "last":
            y = finite[-1]
        else:
            y = sum(finite) / len(finite)
        xs.append(xv)
        ys.append(y)
    return xs, ys


# --------------------------------------------------------------------------------------------
# drawing


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lightning-dfc plotting needs matplotlib: pip install lightning-dfc[plots]"
        ) from err
    return Figure


def _styles(labels: Sequence[str]) -> list[dict]:
    """One colour per variant; a run whose label mentions "fixed" (fixed feedback) is dashed
    and shares the colour of its trained counterpart when both are drawn."""
    import matplotlib as mpl

    cycle = mpl.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    bases: list[str] = []
    styles = []
    for label in labels:
        low = label.lower()
        fixed = "fixed" in low
        base = low
        for word in ("(fixed)", "_fixed", "-fixed", "fixed"):
            base = base.replace(word, "")
        base = base.strip(" -_")
        if base not in bases:
            bases.append(base)
        color = cycle[bases.index(base) % len(cycle)]
        styles.append({"color": color, "linestyle": "--" if fixed else "-"})
    return styles


def _output_paths(output: PathLike, formats: Sequence[str], default_stem: str) -> list[Path]:
    out = Path(output)
    if out.is_dir() or str(output).endswith(("/", "\\")):
        out = out / default_stem
    elif out.suffix.lower().lstrip(".") in {f.lower().lstrip(".") for f in formats} | IMAGE_SUFFIXES:
        out = out.with_suffix("")
    if not formats:
        raise ValueError("formats is empty")
    return [out.with_name(f"{out.name}.{fmt.lstrip('.')}") for fmt in formats]


def _draw_panel(ax, runs: list[Run], styles: list[dict], keys: Sequence[str], x: str,
                reduce: str, ylabel: str | None, hline: float | None, missing: str = "not logged") -> bool:
    """Draw, for each run, the first of ``keys`` it logged; ``missing`` in an empty panel.
    ``x="pretrain_epoch"``: Lightning's epoch + 1, the pre-training epoch. Returns whether
    anything was drawn."""
    drawn, all_xs = False, []
    for run, style in zip(runs, styles):
        key = next((k for k in keys if run.has(k)), None)
        if key is None:
            continue
        if x == "pretrain_epoch":
            xs, ys = series(run, key, "epoch", reduce)
            xs = [v + 1 for v in xs]
        else:
            xs, ys = series(run, key, x, reduce)
        if not xs:
            continue
        marker = "o" if len(xs) <= 30 else None
        suffix = " (sleep)" if "/sleep/" in key and keys[0] != key else ""
        ax.plot(xs, ys, label=run.label + suffix, marker=marker, markersize=3, linewidth=1.5, **style)
        drawn, all_xs = True, all_xs + list(xs)
    if hline is not None and drawn:
        ax.axhline(hline, color="black", linewidth=0.8, linestyle=":")
    if not drawn:
        ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", va="center",
                color="grey", fontsize=12 if missing == "not logged" else 9, wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xlabel(X_LABELS[x])
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if all(float(v).is_integer() for v in all_xs):  # epochs: a tick on whole epochs, even for one point
            low, high = int(min(all_xs)), int(max(all_xs))
            step = max(1, math.ceil((high - low + 1) / 10))
            ax.set_xticks(range(low, high + 1, step))
            ax.set_xlim(low - 0.5, high + 0.5)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    return drawn


def _save(fig, paths: list[Path]) -> list[Path]:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=FIG_DPI)
    return paths


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center",
                   ncols=min(len(labels), 7), frameon=False)


def fig3_figure(
    runs: Sequence[PathLike] | PathLike,
    labels: Sequence[str] | None = None,
    x: str = "wake_epoch",
    reduce: str = "last",
    title: str | None = None,
):
    """The :class:`matplotlib.figure.Figure` that :func:`plot_runs` saves (same arguments)."""
    Figure = _matplotlib()
    loaded = _load_runs(runs, labels)
    fig = Figure(figsize=FIG3_SIZE, layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    styles = _styles([r.label for r in loaded])
    for ax, panel in zip(axes, FIG3_PANELS):
        _draw_panel(ax, loaded, styles, panel.keys, x, reduce, panel.ylabel, panel.hline, DIAGNOSTICS_MISSING)
        ax.set_title(f"{panel.letter}   {panel.title}", loc="left", fontweight="bold", fontsize=11)
    _legend(fig, axes)
    if title:
        fig.suptitle(title)
    return fig


def run_figure(
    runs: Sequence[PathLike] | PathLike,
    labels: Sequence[str] | None = None,
    x: str = "wake_epoch",
    reduce: str = "last",
    title: str | None = None,
):
    """What the runs logged, one panel each: the learning curves (validation accuracy and loss,
    training loss) against ``x``, Condition 2 per pre-training epoch where a run logged it, and
    the six diagnostics panels of Fig. 3 where a run logged any of them (an empty one names the
    callback that logs it). A :class:`matplotlib.figure.Figure`."""
    loaded = _load_runs(runs, labels)
    panels: list[tuple[Panel, str, str]] = [(p, x, "not logged") for p in CURVE_PANELS]
    if any(r.has(k) for r in loaded for k in PRETRAIN_PANEL.keys):
        panels.append((PRETRAIN_PANEL, "pretrain_epoch", "not logged"))
    if any(r.has(k) for r in loaded for p in FIG3_PANELS for k in p.keys):
        panels += [(p, x, DIAGNOSTICS_MISSING) for p in FIG3_PANELS]

    def draw(ax, i: int, styles: list[dict]) -> None:
        panel, panel_x, missing = panels[i]
        _draw_panel(ax, loaded, styles, panel.keys, panel_x, reduce, panel.ylabel, panel.hline, missing)
        name = f"{panel.letter}   {panel.title}" if panel.letter else panel.title
        ax.set_title(name, loc="left", fontweight="bold", fontsize=11)

    return _grid_figure(loaded, len(panels), 3 if len(panels) > 4 else len(panels), draw, title)


def _grid_figure(loaded: list[Run], count: int, ncols: int, draw, title: str | None):
    """A figure of ``count`` panels in rows of ``ncols`` (4.4 x 3.4 inches each):
    ``draw(ax, i, styles)`` fills panel i (``styles``: one per run), one legend for all."""
    Figure = _matplotlib()
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.4 * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    styles = _styles([r.label for r in loaded])
    for i, ax in enumerate(axes[:count]):
        draw(ax, i, styles)
    for ax in axes[count:]:
        ax.set_visible(False)
    _legend(fig, axes[:count])
    if title:
        fig.suptitle(title)
    return fig


def plot_run_curves(
    runs: Sequence[PathLike] | PathLike,
    output: PathLike,
    labels: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    x: str = "wake_epoch",
    reduce: str = "last",
    title: str | None = None,
) -> list[Path]:
    """Save :func:`run_figure` (``lightning-dfc plot RUN``, the summary's command); the
    arguments as for :func:`plot_runs` (``output`` a directory: ``<dir>/curves.*``)."""
    paths = _output_paths(output, formats, "curves")
    return _save(run_figure(runs, labels, x, reduce, title), paths)


def plot_runs(
    runs: Sequence[PathLike] | PathLike,
    output: PathLike,
    labels: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    x: str = "wake_epoch",
    reduce: str = "last",
    title: str | None = None,
) -> list[Path]:
    """Draw the six diagnostics panels of the paper's Fig. 3 for several runs, overlaid.

    Panels (2 x 3, row-major): A Condition 2 (``diag/condition_2``; a run without wake values
    falls back to ``diag/sleep/condition_2``, marked "(sleep)" in the legend), B alignment with
    MN updates (``diag/angle_mn``), C Condition 1 (``diag/condition_1``), D alignment with GN
    updates (``diag/angle_gn``), E stability (``diag/stability``, the largest real part of the
    eigenvalues; dotted line at 0), F alignment with DFC-SSA (``diag/angle_ssa``). A run that did
    not log a panel's metric is left out of that panel; an empty panel says "not logged".
    Conditions 1 and 2 and stability also fall back to their sleep-phase values.

    Args:
        runs: run paths (see :func:`find_runs`: a ``metrics.csv``, its log directory, or a folder
            above several runs).
        output: path stem (``docs/figures/fig3`` -> ``fig3.png``, ``fig3.pdf``; a ``.png`` or
            ``.pdf`` suffix is dropped) or an existing directory (-> ``<dir>/fig3.*``).
        labels: legend labels, one per run found (default: the logger's name[/version]).
        formats: file formats to write.
        x: ``wake_epoch`` (default), ``epoch`` or ``step``.
        reduce: ``last`` or ``mean`` of several values at one x (see :func:`series`).
        title: figure title.

    Returns:
        The files written (``FIG3_SIZE`` inches at ``FIG_DPI``: 1950 x 1125 pixels).

    Raises:
        FileNotFoundError: a run path does not exist or holds no ``metrics.csv``.
        ValueError: the number of labels differs from the number of runs found.
        ImportError: matplotlib is not installed.
    """
    paths = _output_paths(output, formats, "fig3")
    return _save(fig3_figure(runs, labels, x, reduce, title), paths)


def plot_metrics(
    runs: Sequence[PathLike] | PathLike,
    keys: Sequence[str],
    output: PathLike,
    labels: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    x: str = "wake_epoch",
    reduce: str = "last",
    title: str | None = None,
) -> list[Path]:
    """One panel per logged key, several runs overlaid (same conventions as :func:`plot_runs`).

    ``keys`` may contain shell-style patterns (``"diag/angle_mn/layer_*"``), expanded against
    the columns of all runs (a pattern matching nothing gives one "not logged" panel).
    """
    _matplotlib()  # before reading the runs: a missing matplotlib is the first thing said
    if not keys:
        raise ValueError("no metrics given")
    loaded = _load_runs(runs, labels)
    columns: list[str] = []
    for r in loaded:
        columns += [c for c in r.columns if c not in columns]
    expanded: list[str] = []
    for key in keys:
        matches = [c for c in columns if fnmatch.fnmatchcase(c, key)] if any(ch in key for ch in "*?[") else [key]
        for k in matches or [key]:
            if k not in expanded:
                expanded.append(k)
    paths = _output_paths(output, formats, "metrics")

    def draw(ax, i: int, styles: list[dict]) -> None:
        _draw_panel(ax, loaded, styles, (expanded[i],), x, reduce, None, None)
        ax.set_title(expanded[i], fontsize=10)

    return _save(_grid_figure(loaded, len(expanded), min(3, len(expanded)), draw, title), paths)


# --------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-dfc plot",
        description=(
            "Plot CSVLogger metrics of DFC runs. By default what the runs logged: the learning "
            "curves (validation accuracy and loss, training loss) per wake epoch, Condition 2 per "
            "pre-training epoch, and the diagnostics panels of the DFC paper's Fig. 3 where logged "
            "(lightning_dfc.shell.callbacks.ConditionMonitor). --fig3: those six panels only; --metrics: any keys."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="metrics.csv files, CSVLogger log directories, or folders above them")
    parser.add_argument("-o", "--output", default="curves",
                        help="output path stem, e.g. docs/figures/fig3 (default: curves), or a directory")
    parser.add_argument("--fig3", action="store_true",
                        help="the six diagnostics panels of Fig. 3 of the DFC paper only")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run found")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="KEY",
                        help="plot these logged keys (shell patterns allowed) instead of Fig. 3")
    parser.add_argument("--x", choices=X_AXES, default="wake_epoch", help="x axis (default: wake_epoch)")
    parser.add_argument("--reduce", choices=("last", "mean"), default="last",
                        help="several values at one x: keep the last (default) or average them")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], help="file formats (default: png pdf)")
    parser.add_argument("--title", default=None, help="figure title")
    return parser


def plot_main(argv: Sequence[str] | None = None) -> list[Path]:
    """``lightning-dfc plot ...``: parse ``argv`` (without the ``plot`` word) and draw.

    Errors (a missing run, no metrics.csv, a wrong number of labels, no matplotlib) exit with
    status 2 and a message naming the problem.
    """
    parser = _parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        if args.metrics and args.fig3:
            raise ValueError("give --metrics or --fig3, not both")
        if args.metrics:
            paths = plot_metrics(args.runs, args.metrics, args.output, labels=args.labels,
                                 formats=args.formats, x=args.x, reduce=args.reduce, title=args.title)
        else:
            draw = plot_runs if args.fig3 else plot_run_curves
            paths = draw(args.runs, args.output, labels=args.labels, formats=args.formats,
                         x=args.x, reduce=args.reduce, title=args.title)
    except (FileNotFoundError, ValueError, ImportError) as err:
        parser.error(str(err))
    for p in paths:
        print(p)
    return paths
