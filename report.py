"""`mptc report RUN_DIR [RUN_DIR ...] [--out DIR]`: an HTML page of plots of one or several runs.

Writes `report.html` and its PNG images beside it (relative links, no scripts, nothing fetched): into
the run directory for one run, into the runs' common parent folder for several (a sweep's folder, beside
its summary.md), or into `--out`. Sections, each omitted when the run lacks its file: the losses, the
hypergradient's norm and solver residual over meta-steps (metrics.jsonl), each scalar meta-parameter's
trajectory (its `meta.NAME` column), each vector meta-parameter sorted and coloured by the planted truth
(meta.json, diagnostics.json's `planted_kind` or `planted`), the weighting networks' per-example weights
(example_weights.json), the restarts of `evaluate restarts` and the evaluation's means with error bars
(eval.json). Several runs share each plot: curves overlaid with a legend, per-run plots side by side.

    mptc report runs/quickstart
    mptc report runs/lr/*/ --out runs/lr-report
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import attrs

from mptc.cli import path_arg
from mptc.errors import RunError

MARKERS = ("ir.json", "metrics.jsonl", "meta.json")  # a folder with none of these is not a run directory
CURVES = [("pt_loss", "PT loss", False), ("ft_val_loss", "FT-val loss (meta-objective)", False),
          ("hypergrad_norm", "hypergradient norm", True), ("solver_residual", "solver residual", True)]
KIND_COLOURS = {"related": "#2ca02c", "finetune": "#1f77b4", "adversarial": "#d62728", "unrelated": "#9a9a9a",
                "relevant": "#2ca02c", "not relevant": "#9a9a9a"}
PANEL = (5.2, 3.4)  # inches per panel; at 100 dpi a 2-panel row is about 1040 px wide
MAX_COLUMNS = 3


@attrs.frozen
class Run:
    """One run directory as read: its files, parsed; an absent file is None."""

    path: Path
    label: str
    name: str
    doc: str
    metrics: list | None
    meta: dict | None
    evals: dict | None
    diagnostics: dict | None
    weights: dict | None
    files: list
    scalars: list | None = None  # the scalar meta-parameters (ir.json, else meta.json); None: every meta.NAME


def report_arguments(p) -> None:
    """`mptc report`'s arguments (registered in cli.COMMANDS)."""
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", type=path_arg, default=None, help="folder of report.html and its images (default: the run "
                   "directory for one run, the runs' common parent folder for several)")
    p.set_defaults(fn=cmd_report)


def cmd_report(args) -> int:
    out = write_report([Path(r) for r in args.runs], Path(args.out) if args.out else None)
    print(f"report: {out}")
    return 0


# ---- reading run directories ------------------------------------------------------------------------
def load_run(path: Path, label: str | None = None) -> Run:
    """A run directory's files; RunError when `path` is not a run directory or a file is not JSON."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"'{path}' is not a run directory: {'not a folder' if path.exists() else 'no such folder'}")
    if not _is_run(path):
        raise RunError(f"'{path}' is not a run directory (it has none of {', '.join(MARKERS)}){_inner_runs(path)}")
    plan, meta = _json(path / "ir.json") or {}, _json(path / "meta.json")
    name, doc = plan.get("name"), plan.get("doc")
    if name is None and (path / "spec.mpt").is_file():
        name, doc = _spec_header((path / "spec.mpt").read_text(encoding="utf-8", errors="replace"))
    return Run(path, label or path.name, name or path.name, doc or "", _jsonl(path / "metrics.jsonl"), meta,
               _json(path / "eval.json"), _json(path / "diagnostics.json"), _json(path / "example_weights.json"),
               _run_files(path), _scalar_names(plan, meta))


def _scalar_names(plan: dict, meta) -> list | None:
    """The scalar meta-parameters (ir.json's, else meta.json's numbers): metrics.jsonl also logs a weighting
    network's one-element tensors as meta.NAME, which are not meta-parameters of their own."""
    if isinstance(plan.get("metas"), list):
        return [m["name"] for m in plan["metas"] if m.get("kind") == "scalar"]
    return [n for n, v in meta.items() if isinstance(v, (int, float))] if isinstance(meta, dict) else None


def _is_run(path: Path) -> bool:
    return any((path / m).is_file() for m in MARKERS)


def _inner_runs(path: Path) -> str:
    """A hint for a folder of runs (a sweep's): the runs it holds and the command that reports them."""
    inner = [d.name for d in sorted(path.iterdir()) if d.is_dir() and _is_run(d)]
    if not inner:
        return ""
    return f"; it holds run directories ({', '.join(inner[:3])}{', ...' * (len(inner) > 3)}): mptc report {path}/*/"


def _json(path: Path):
    """A file's JSON object, None when the file is absent; RunError for anything but a JSON object."""
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunError(f"'{path}' is not valid JSON ({e})") from None
    if not isinstance(found, dict):
        raise RunError(f"'{path}' is not a JSON object")
    return found


def _jsonl(path: Path):
    """metrics.jsonl's rows (objects), None when the file is absent."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [_json_line(path, i, line) for i, line in enumerate(lines, 1) if line.strip()]


def _json_line(path: Path, number: int, line: str) -> dict:
    try:
        found = json.loads(line)
    except ValueError as e:
        raise RunError(f"'{path}' line {number} is not valid JSON ({e})") from None
    if not isinstance(found, dict):
        raise RunError(f"'{path}' line {number} is not a JSON object")
    return found


def _spec_header(text: str) -> tuple[str | None, str | None]:
    """(name, description) of a spec's `spec NAME "description"` line.

    >>> _spec_header('# a comment\\nspec demo "Task weights"\\n')
    ('demo', 'Task weights')
    """
    m = re.search(r'^\s*spec\s+(\w+)(?:\s+"((?:[^"\\]|\\.)*)")?', text, re.MULTILINE)
    return (m[1], m[2]) if m else (None, None)


def _run_files(path: Path) -> list:
    """(name, size) of the run's own files; the report's (report.html, PNGs) and hidden ones left out."""
    return [(f.name, f.stat().st_size) for f in sorted(path.iterdir())
            if f.is_file() and not f.name.startswith(".") and f.name != "report.html" and f.suffix != ".png"]


def _labels(paths: list[Path]) -> list[str]:
    """Each run's name in legends: its folder name, or its path below the common parent where names repeat."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    root = os.path.commonpath([p.resolve() for p in paths])
    return [os.path.relpath(p.resolve(), root) for p in paths]


# ---- the report ---------------------------------------------------------------------------------------
def write_report(paths: list[Path], out: Path | None = None) -> Path:
    """Reads the runs, writes `out/report.html` and its images; returns the page's path.

        write_report([Path("runs/quickstart")])     # runs/quickstart/report.html
    """
    paths = list({p.resolve(): Path(p) for p in paths}.values())  # a run named twice is shown once
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths))]
    out = Path(out) if out else _default_out(paths)
    try:
        out.mkdir(parents=True, exist_ok=True)
        sections = [s for make in SECTIONS for s in _as_list(make(runs, out))]
        html = _template().render(runs=[_header(r, out) for r in runs], sections=sections,
                                  tables=_tables(runs), title=_title(runs))
        tmp = out / ".report.html.tmp"
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out / "report.html")
    except OSError as e:
        raise RunError(f"cannot write the report into '{out}': {e.strerror or e}") from None
    return out / "report.html"


def _as_list(found) -> list:
    return found if isinstance(found, list) else [found] if found else []


def _default_out(paths: list[Path]) -> Path:
    """The run directory for one run; for several, their common parent folder (a sweep's folder, beside
    its summary.md): no run's own report is overwritten, and no new folder joins the runs, so
    `mptc report DIR/*/` still names runs only when run again."""
    if len(paths) == 1:
        return Path(paths[0])
    return Path(os.path.commonpath([p.resolve() for p in paths]))


def _title(runs: list[Run]) -> str:
    names = list(dict.fromkeys(r.name for r in runs))
    return f"mptc report: {', '.join(names)}" + (f" ({len(runs)} runs)" if len(runs) > 1 else "")


def _header(run: Run, out: Path) -> dict:
    """What the page's header shows of a run: names, description, folder and files as relative links."""
    rel = Path(os.path.relpath(run.path.resolve(), out.resolve()))
    files = [{"name": n, "href": (rel / n).as_posix(), "size": _size(s)} for n, s in run.files]
    return {"label": run.label, "name": run.name, "doc": run.doc, "path": str(run.path), "files": files}


def _size(n: int) -> str:
    """A file size for people.

    >>> _size(512), _size(2048), _size(3 * 1024 * 1024)
    ('512 B', '2.0 KiB', '3.0 MiB')
    """
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _template():
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2")


# ---- the tables: final numbers, evaluation, diagnostics -------------------------------------------
def _tables(runs: list[Run]) -> list[dict]:
    """Tables of numbers, one column per run: the last logged metrics, eval.json, diagnostics.json."""
    rows = {"Last logged meta-step (metrics.jsonl)": _last_metrics,
            "Evaluation: mean ± stderr over seeds (eval.json)": _eval_cells,
            "Headline figures (eval.json)": _headline_cells, "Diagnostics (diagnostics.json)": _diagnostic_cells}
    tables = []
    for title, cells_of in rows.items():
        cells = [cells_of(r) for r in runs]
        keys = list(dict.fromkeys(k for c in cells for k in c))
        if keys:
            tables.append({"title": title, "columns": [r.label for r in runs],
                           "rows": [[k, *(c.get(k, "") for c in cells)] for k in keys]})
    return tables


def _fmt(v) -> str:
    """A number as shown in tables.

    >>> _fmt(0.123456789), _fmt(12), _fmt(None), _fmt(True)
    ('0.1235', '12', '', 'True')
    """
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def _last_metrics(run: Run) -> dict:
    rows = run.metrics or []
    keys = ["meta_step", "trial", "pt_loss", "ft_val_loss", "hypergrad_norm", "elapsed_s"]
    last = rows[-1] if rows else {}
    return {k: _fmt(last[k]) for k in keys + [k for k in last if _is_scalar(run, k)] if k in last}


def _methods(run: Run) -> dict:
    """eval.json's methods: the entries with a metric and a mean (not the headline figures)."""
    return {m: e for m, e in (run.evals or {}).items() if isinstance(e, dict) and "metric" in e and "mean" in e}


def _eval_cells(run: Run) -> dict:
    return {f"{m} ({e['metric']})": _mean_cell(e) for m, e in _methods(run).items()}


def _mean_cell(e: dict) -> str:
    """mean ± stderr (n seeds), or the mean alone where the seeds were all equal (`degenerate`).

    >>> _mean_cell({"mean": 0.7, "stderr": 0.0, "seeds": 3, "degenerate": True})
    '0.7 (all 3 seeds equal)'
    """
    if e.get("degenerate"):
        return f"{_fmt(e['mean'])} (all {e.get('seeds', '?')} seeds equal)"
    return f"{_fmt(e['mean'])} ± {_fmt(e.get('stderr'))} ({e.get('seeds', '?')} seeds)"


def _headline_cells(run: Run) -> dict:
    out = {}
    for name, e in (run.evals or {}).items():
        if name in _methods(run) or not isinstance(e, dict):
            continue
        if "mean" in e:
            out[name] = f"{_fmt(e['mean'])} ± {_fmt(e.get('stderr'))}"
        elif "ratio" in e:
            out[name] = _fmt(e["ratio"])
    return out


def _diagnostic_cells(run: Run) -> dict:
    return {k: _fmt(v) for k, v in (run.diagnostics or {}).items() if isinstance(v, (int, float))}


# ---- the plots ----------------------------------------------------------------------------------------
def _figure(panels: int, width: float = PANEL[0]):
    """A figure of `panels` axes in rows of at most MAX_COLUMNS (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    cols = min(MAX_COLUMNS, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, PANEL[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=100)
    return name


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _finite(values) -> list[float]:
    """Floats, with None and non-finite values (a skipped meta-step's) as NaN, so the line has a gap."""
    return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]


def _series(run: Run, key: str):
    """(x, y) of a metrics.jsonl column against the meta-step (or the trial of a `search` run)."""
    rows = [r for r in run.metrics or [] if key in r]
    x = [r.get("meta_step", r.get("trial", i)) for i, r in enumerate(rows)]
    return x, _finite(r[key] for r in rows)


def _logged(runs: list[Run], key: str) -> bool:
    """Whether any run logged a finite value of the column (the `unroll` estimator logs no residual)."""
    return any(not math.isnan(v) for r in runs for v in _series(r, key)[1])


def _plot_curves(axes, runs: list[Run], specs: list[tuple[str, str, bool]]) -> None:
    """One panel per (column, title, log scale), each run's line in its colour; log scale only where the
    values are positive and span more than a decade (a narrow range reads badly in powers of ten)."""
    from matplotlib.ticker import MaxNLocator, NullFormatter
    for ax, (key, title, log) in zip(axes, specs):
        for i, run in enumerate(runs):
            x, y = _series(run, key)
            if x:
                ax.plot(x, y, color=_colour(i), label=run.label, marker="o" if len(x) <= 30 else None, ms=3)
        values = [v for r in runs for v in _series(r, key)[1] if not math.isnan(v)]
        if log and values and min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")
            if max(values) >= 100 * min(values):        # two decades or more: the powers of ten suffice
                ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("trial" if not any(_series(r, "meta_step")[0] for r in runs) else "meta-step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0].legend(fontsize=8)


def plot_losses(runs: list[Run], out: Path) -> dict | None:
    specs = [s for s in CURVES[:2] if _logged(runs, s[0])]
    if not specs:
        return None
    fig, axes = _figure(len(specs))
    _plot_curves(axes, runs, specs)
    return {"title": "Losses", "image": _save(fig, out, "loss.png"),
            "caption": "The PT loss (mean over the meta-step's PT steps) and the meta-objective on FT-val, "
                       "at each logged meta-step (metrics.jsonl)."}


def plot_hypergradient(runs: list[Run], out: Path) -> dict | None:
    specs = [s for s in CURVES[2:] if _logged(runs, s[0])]
    if not specs:
        return None
    fig, axes = _figure(len(specs))
    _plot_curves(axes, runs, specs)
    return {"title": "Hypergradient", "image": _save(fig, out, "hypergradient.png"),
            "caption": "The hypergradient's norm and the linear solver's residual, where logged."}


def plot_scalars(runs: list[Run], out: Path) -> dict | None:
    names = list(dict.fromkeys(k for r in runs for row in r.metrics or [] for k in row if _is_scalar(r, k)))
    names = [k for k in names if _logged(runs, k)]
    if not names:
        return None
    fig, axes = _figure(len(names))
    _plot_curves(axes, runs, [(k, k[len("meta."):], False) for k in names])
    return {"title": "Scalar meta-parameters", "image": _save(fig, out, "meta_scalars.png"),
            "caption": "Each scalar meta-parameter after each logged meta-step (the meta.NAME columns)."}


def _is_scalar(run: Run, column: str) -> bool:
    return column.startswith("meta.") and (run.scalars is None or column[len("meta."):] in run.scalars)


def _panels_by_run(runs: list[Run], items: list[tuple[Run, str]]):
    """A figure with one panel per (run, name) item, titled with the run's label when there are several runs."""
    fig, axes = _figure(len(items))
    for ax, (run, name) in zip(axes, items):
        ax.set_title(f"{name} — {run.label}" if len(runs) > 1 else name, fontsize=11)
        ax.grid(alpha=0.3)
    return fig, axes


def plot_vectors(runs: list[Run], out: Path) -> list[dict]:
    """Per vector meta-parameter (meta.json), its values sorted, coloured by the planted truth; the caption
    names the highest and lowest components (of the first run that has the vector)."""
    from mptc.runtime.metajson import vectors
    found = [vectors(r.meta or {}) for r in runs]      # name -> (names, values), per run
    names = list(dict.fromkeys(n for vecs in found for n in vecs))
    sections = []
    for name in names:
        having = [(r, vecs[name]) for r, vecs in zip(runs, found) if vecs.get(name, (None, []))[1]]
        fig, axes = _panels_by_run(runs, [(r, name) for r, _ in having])
        coloured = any(_truth(run, name) for run, _ in having)
        for ax, (run, (_, values)) in zip(axes, having):
            _sorted_weights(ax, values, _truth(run, name))
        caption = (f"{name} sorted from largest to smallest, one point per component"
                   + (", coloured by the planted truth of the data (diagnostics.json)" if coloured else "")
                   + _ends(*having[0][1]) + ".")
        image = _save(fig, out, f"weights_{_slug(name)}.png")
        sections.append({"title": f"Vector meta-parameter {name}", "image": image, "caption": caption})
    return sections


def _ends(names: list, values: list, shown: int = 3) -> str:
    """The caption's names of the highest and lowest components (meta.json's names).

    >>> _ends(["a", "b", "c", "d"], [0.1, 0.4, 0.3, 0.2], shown=1)
    '; highest: b (0.4); lowest: a (0.1)'
    """
    ranked = sorted((-v, i) for i, v in enumerate(_finite(values)) if not math.isnan(v))
    if len(ranked) < 2 * shown:
        return ""
    shown_as = [f"{names[i]} ({_fmt(values[i])})" for _, i in ranked]
    return f"; highest: {', '.join(shown_as[:shown])}; lowest: {', '.join(shown_as[::-1][:shown])}"


def _truth(run: Run, name: str) -> list | None:
    """The planted category of each component of vector `name`: the data's kinds, else relevant or not."""
    diag = run.diagnostics or {}
    kinds = (diag.get("planted_kind") or {}).get(name)
    if kinds:
        return [str(k) for k in kinds]
    planted = (diag.get("planted") or {}).get(name)
    return ["relevant" if p else "not relevant" for p in planted] if planted else None


def _sorted_weights(ax, values: list, truth: list | None) -> None:
    finite = _finite(values)
    order = sorted(range(len(finite)), key=lambda i: -finite[i] if not math.isnan(finite[i]) else math.inf)
    y, size = [finite[i] for i in order], 14 if len(values) <= 200 else 3
    if truth is None or len(truth) != len(values):
        ax.scatter(range(len(y)), y, s=size, color="C0")
    else:
        for kind in sorted(set(truth), key=lambda k: (list(KIND_COLOURS).index(k) if k in KIND_COLOURS else 99, k)):
            ranks = [r for r, i in enumerate(order) if truth[i] == kind]
            ax.scatter(ranks, [y[r] for r in ranks], s=size, label=f"{kind} ({len(ranks)})",
                       color=KIND_COLOURS.get(kind))
        ax.legend(fontsize=8)
    ax.set_xlabel("rank")
    ax.set_ylabel("value")


def plot_example_weights(runs: list[Run], out: Path) -> list[dict]:
    """Per weighting network (example_weights.json), a histogram of its weights over the PT examples."""
    names = list(dict.fromkeys(n for r in runs for n in (r.weights or {})))
    sections = []
    for name in names:
        items = [(r, name) for r in runs if (r.weights or {}).get(name, {}).get("values")]
        fig, axes = _panels_by_run(runs, items)
        for ax, (run, _) in zip(axes, items):
            _histogram(ax, run.weights[name])
        first = items[0][0].weights[name]
        caption = (f"{first.get('of', name)} (network {name}) on each example of the PT data "
                   f"({first.get('dataset', '?')}, split {first.get('split', '?')}) at the end of the run"
                   + ("; examples with clean and with corrupted labels stacked." if "clean" in first else "."))
        sections.append({"title": f"Per-example weights of network {name}",
                         "image": _save(fig, out, f"example_weights_{_slug(name)}.png"), "caption": caption})
    return sections


def _histogram(ax, entry: dict) -> None:
    values, clean = _finite(entry["values"]), entry.get("clean")
    values_ok = [v for v in values if not math.isnan(v)]
    bins = 40 if len(values_ok) > 1 and min(values_ok) < max(values_ok) else 1
    if clean and len(clean) == len(values):
        groups = [[v for v, c in zip(values, clean) if c and not math.isnan(v)],
                  [v for v, c in zip(values, clean) if not c and not math.isnan(v)]]
        labels = [f"clean ({len(groups[0])})", f"corrupted ({len(groups[1])})"]
        ax.hist(groups, bins=bins, stacked=True, label=labels, color=["#2ca02c", "#d62728"])
        ax.legend(fontsize=8)
    else:
        ax.hist(values_ok, bins=bins, color="C0")
    ax.set_xlabel(f"weight ({len(values_ok)} examples)")
    ax.set_ylabel("examples")


def plot_restarts(runs: list[Run], out: Path) -> dict | None:
    """`evaluate restarts`: the scalar meta-parameter's path from each initial value."""
    items = [(r, (r.evals or {})["restarts"]["meta"]) for r in runs
             if isinstance((r.evals or {}).get("restarts"), dict) and (r.evals or {})["restarts"].get("paths")]
    if not items:
        return None
    fig, axes = _panels_by_run(runs, items)
    for ax, (run, _) in zip(axes, items):
        found = run.evals["restarts"]
        for i, (init, path) in enumerate(zip(found["inits"], found["paths"])):
            ax.plot(range(len(path) + 1), [init, *path], color=_colour(i), lw=1.2, label=f"from {_fmt(init)}")
        target = (run.evals.get("rotation_error_deg") or {}).get("target")
        if target is not None:
            ax.axhline(target, color="k", ls="--", lw=1, label=f"target {_fmt(target)}")
        ax.legend(fontsize=7, ncols=2 if len(found["inits"]) > 5 else 1)
        ax.set_xlabel("meta-step")
    return {"title": "Restarts", "image": _save(fig, out, "restarts.png"),
            "caption": "The meta-parameter after each meta-step, meta-training repeated from each initial "
                       "value (evaluate restarts, eval.json)."}


def plot_eval(runs: list[Run], out: Path) -> dict | None:
    """Each method's mean ± stderr over seeds (eval.json), runs side by side within a method, seeds as dots."""
    methods = list(dict.fromkeys(m for r in runs for m in _methods(r)))
    if not methods:
        return None
    fig, (ax,) = _figure(1, width=max(PANEL[0], 0.4 + 1.2 * len(methods) * max(1, len(runs) / 2)))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        for k, m in enumerate(m for m in methods if m in _methods(run)):
            e, x = _methods(run)[m], methods.index(m) + (i - (len(runs) - 1) / 2) * width
            ax.errorbar([x], [e["mean"]], yerr=[e.get("stderr") or 0], fmt="o", color=_colour(i), capsize=4,
                        label=run.label if k == 0 else None)
            values = _finite(e.get("values") or [])
            ax.scatter([x + width * 0.25] * len(values), values, s=8, color=_colour(i), alpha=0.4)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    metrics = sorted({e["metric"] for r in runs for e in _methods(r).values()})
    ax.set_ylabel(", ".join(metrics))
    ax.grid(alpha=0.3, axis="y")
    if len(runs) > 1:
        ax.legend(fontsize=8)
    return {"title": "Evaluation", "image": _save(fig, out, "eval.png"),
            "caption": "Each method's mean over evaluation seeds with its standard error; the faint dots are "
                       "the seeds' values (eval.json)."}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


SECTIONS = (plot_losses, plot_hypergradient, plot_scalars, plot_vectors, plot_example_weights, plot_restarts,
            plot_eval)
