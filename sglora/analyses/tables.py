"""Metric tables from the per-(method, task) metric files: CSV, Markdown and LaTeX.

One table per evaluation group (in-dataset, cross-dataset, seen tasks, ...), rows =
methods, columns = I2T/T2I Recall@1/5/10 (or accuracy), averaged over the group's tasks,
each with its 95% bootstrap interval (``sglora.evaluation.stats``: families, the tasks of each drawn
family, test queries and runs resampled; the families of a group: :func:`group_families`);
plus a per-task table, since averages hide failures.

Generative methods (SG-LoRA, P-diff, COND P-Diff) draw N samples per task, possibly from
several runs (CVAE seeds): their row is the mean over samples. Bold marks the best of the
methods that do not see the task's data (so not the Oracle) only where its paired interval
against the runner-up excludes zero; otherwise the tied leaders get a dagger. A second
table, ``<group>.paired``, gives "SG-LoRA minus each method" with paired intervals and the
difference each comparison could detect (80% power, 5% level). The
best of N (a sample chosen on test data) is only in ``<group>.diagnostic.md``, labelled.
Published numbers, where the paper has the table, follow as "(paper)" rows, with a note on
how our run differs from the paper's experiment.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Collection

import numpy as np

from ..io import SGLoraError, atomic_path, read_json
from ..methods import METHODS, label
from ..paper import PAPER_TABLES
from ..evaluation.stats import (DETECTABLE, N_BOOT, VERDICTS, GroupStats, clusters, family_labels, group_stats,
                                n_runs, n_units, pooled_group_stats, power, run_hits, task_differences, units_for, verdict)

RETRIEVAL_COLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
COL_NAMES = {"i2t_r1": "I2T R@1", "i2t_r5": "I2T R@5", "i2t_r10": "I2T R@10", "t2i_r1": "T2I R@1",
             "t2i_r5": "T2I R@5", "t2i_r10": "T2I R@10", "accuracy": "Accuracy"}


def load_group(metrics: dict[str, str | Path], group: str, methods: list[str],
               tasks: list[str]) -> dict[str, dict[str, dict]]:
    """The metric files of a group, each checked (:func:`read_metrics`): ``metrics`` maps
    ``"<group>/<method>"`` to the folder 'sglora evaluate' wrote (one ``<task>.json`` per task)."""
    out: dict[str, dict[str, dict]] = {}
    kinds: dict[str, Path] = {}
    queries: dict[str, tuple[str, Path]] = {}  # task -> its test queries per direction, and the first file read
    for m in methods:
        folder = metrics.get(f"{group}/{m}")
        if folder is None:
            raise SGLoraError(f"metrics: no folder given for group {group!r}, method {m!r} (--metrics {group}/{m}=DIR)")
        for t in tasks:
            path = Path(folder) / f"{t}.json"
            if not path.exists():
                raise SGLoraError(f"{path}: metrics file missing (method {m!r}, task {t!r})")
            res = read_metrics(path, group, m, t)
            kinds.setdefault(res["kind"], path)
            if len(kinds) > 1:
                kind, other = next(iter(kinds.items()))
                raise SGLoraError(f"{path}: field 'kind' is {res['kind']!r}, but {other} of the same group is "
                                  f"{kind!r}; expected one kind per group")
            per_query = {"correct": res["correct"]} if "correct" in res else res["ranks"]
            counts = " / ".join(f"{len(v[0])} {d}" for d, v in sorted(per_query.items()))
            want, other = queries.setdefault(t, (counts, path))
            if counts != want:
                raise SGLoraError(f"{path}: {counts} test queries, but {other} of the same task has {want}; every "
                                  "method of a group is scored on the same test queries")
            out.setdefault(m, {})[t] = res
    return out


BOOTSTRAP_UNITS = ("family", "task")  #: what a bootstrap replicate draws first (config evaluation.bootstrap_unit)


def group_families(group: dict, embedded: Collection[str] = (), name: str = "") -> dict[str, str]:
    """The family of each task of a group (config ``groups.<name>``), the one source of the
    bootstrap's families: the group's ``families`` (task -> family) where given; else, on an
    embedded dataset (``embedded``: their names), the family word of the task's class
    (``sglora.analyses.premises.task_family``); else every task is its own family, and the family
    bootstrap is the task bootstrap."""
    from .premises import task_family

    tasks = list(group["tasks"])
    given = group.get("families")
    if given is not None:
        missing = [t for t in tasks if t not in given]
        if not isinstance(given, dict) or missing:
            raise SGLoraError(f"groups.{name}.families: expected a family for every task of the group (task -> family); "
                              f"missing {missing if isinstance(given, dict) else tasks}")
        return {t: str(given[t]) for t in tasks}
    if group.get("dataset") not in embedded:
        return {t: t for t in tasks}
    out = {}
    for t in tasks:
        fam = task_family(t.replace("_", " "))
        if fam is None:
            raise SGLoraError(f"groups.{name}.tasks: {t!r} is not a class of the embedded world (no family word); "
                              f"give the group's families in groups.{name}.families")
        out[t] = fam
    return out


def read_metrics(path: str | Path, group: str, method: str, task: str) -> dict:
    """One ``<task>.json`` of 'sglora evaluate', checked before it reaches a table: its
    ``method``, ``task`` (and ``group``, where written) are the ones asked for; ``n`` samples
    with their metrics, all finite; per-query ranks (integers >= 1) or correct flags (0/1)
    for each sample, and a run label for each. An error names the file and the field."""
    res = read_json(path)
    if not isinstance(res, dict):
        raise SGLoraError(f"{path}: expected a JSON object (a metrics file of 'sglora evaluate')")
    if "ranks" not in res and "correct" not in res:
        raise SGLoraError(f"{path}: no per-query results (written by an older 'sglora evaluate'); rerun the "
                          "evaluations: snakemake --forcerun evaluate")
    missing = [k for k in ("method", "task", "kind", "n", "mean", "std", "best_of_n", "per_sample", "runs") if k not in res]
    if missing:
        raise SGLoraError(f"{path}: lacks the field(s) {missing} of a metrics file of 'sglora evaluate'")
    for key, want in (("method", method), ("task", task), ("group", group)):
        if res.get(key, "") not in (want, "" if key == "group" else want):  # 'sglora evaluate' without --group: ""
            raise SGLoraError(f"{path}: field {key!r} is {res[key]!r}; expected {want!r} (the folder it was given for)")
    if res["kind"] not in ("retrieval", "classification"):
        raise SGLoraError(f"{path}: field 'kind' is {res['kind']!r}; expected 'retrieval' or 'classification'")
    n = res["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SGLoraError(f"{path}: field 'n' is {n!r}; expected the number of samples (an integer >= 1)")
    cols = ["accuracy"] if res["kind"] == "classification" else RETRIEVAL_COLS
    samples = res["per_sample"]
    if not isinstance(samples, list) or len(samples) != n:
        raise SGLoraError(f"{path}: field 'per_sample' has {len(samples) if isinstance(samples, list) else 'no'} "
                          f"entries; expected n = {n}")
    for field, metrics in [("mean", res["mean"]), ("std", res["std"]), ("best_of_n", res["best_of_n"])] + [
            (f"per_sample[{i}]", s) for i, s in enumerate(samples)]:
        for c in cols:
            v = metrics.get(c) if isinstance(metrics, dict) else None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise SGLoraError(f"{path}: field '{field}.{c}' is {v!r}; expected a finite number")
    if not isinstance(res["runs"], list) or len(res["runs"]) != n or not all(
            isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in res["runs"]):
        raise SGLoraError(f"{path}: field 'runs' is {res['runs']!r}; expected n = {n} run labels (integers >= 0)")
    if res["kind"] == "classification":
        per_query = {"correct": res.get("correct")}
    else:
        ranks = res.get("ranks") if isinstance(res.get("ranks"), dict) else {}
        per_query = {f"ranks.{d}": ranks.get(d) for d in ("i2t", "t2i")}
    for field, values in per_query.items():
        try:
            arr = np.asarray(values)
        except ValueError:  # ragged lists
            arr = np.asarray(None)
        if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] == 0 or arr.dtype.kind not in "iu":
            raise SGLoraError(f"{path}: field {field!r} must hold n = {n} lists of one integer per test query, "
                              f"all of one length")
        low, high = (0, 1) if field == "correct" else (1, None)
        if arr.min() < low or (high is not None and arr.max() > high):
            bad = int(arr.min()) if arr.min() < low else int(arr.max())
            raise SGLoraError(f"{path}: field {field!r} holds {bad}; expected "
                              + ("0 or 1 per image" if field == "correct" else "ranks >= 1"))
    return res


def metric_cols(results: dict[str, dict[str, dict]]) -> list[str]:
    """The metric columns of a group's results: accuracy (classification) or the retrieval recalls."""
    first = next(iter(next(iter(results.values())).values()))
    return ["accuracy"] if first["kind"] == "classification" else list(RETRIEVAL_COLS)


def primary_cols(cols: list[str]) -> list[str]:
    """The columns a group is judged on: accuracy, or I2T and T2I R@1."""
    return ["accuracy"] if cols == ["accuracy"] else ["i2t_r1", "t2i_r1"]


def method_label(method: str, per_task: dict[str, dict]) -> str:
    """"SG-LoRA (3 runs x 10 samples)", "SG-LoRA (mean of 10)" or "Top-K LoRA Weighted"."""
    name, n, runs = label(method), max(r["n"] for r in per_task.values()), n_runs(per_task)
    if runs > 1:
        return f"{name} ({runs} runs)" if n == runs else (
            f"{name} ({runs} runs x {n // runs} samples)" if n % runs == 0 else f"{name} ({runs} runs, {n} samples)")
    return f"{name} (mean of {n})" if n > 1 else name


def summarize_group(results: dict[str, dict[str, dict]], n_boot: int = N_BOOT, seed: int = 0,
                    families: dict[str, str] | None = None,
                    pool: list[dict[str, dict[str, dict]]] = ()) -> tuple[list[dict], list[str], dict[str, GroupStats]]:
    """Rows ``{method, label, kind, n, runs, <metric>, <metric>_lo, _hi, _se[, _std]}`` (the
    mean over tasks, its interval and standard error, the spread over samples) and each
    metric's :class:`~sglora.evaluation.stats.GroupStats` (for paired differences). ``families``: task ->
    family (:func:`group_families`; None: the task bootstrap). ``pool``: the results of further
    training replicates: means and intervals pooled with ``results`` (replicate 0)."""
    cols = metric_cols(results)
    if pool:
        stats = {c: pooled_group_stats([results, *pool], c, n_boot, seed, families) for c in cols}
    else:
        stats = {c: group_stats(results, c, n_boot, seed, families) for c in cols}
    rows = []
    for m, per_task in results.items():
        n = max(r["n"] for r in per_task.values())
        row = {"method": m, "label": method_label(m, per_task), "kind": "mean" if n > 1 else "single", "n": n,
               "runs": n_runs(per_task)}
        for c in cols:
            iv = stats[c].interval(m)
            row.update({c: iv.estimate, f"{c}_lo": iv.lo, f"{c}_hi": iv.hi, f"{c}_se": iv.se})
            if n > 1:
                row[f"{c}_std"] = float(np.mean([r["std"][c] for res in [results, *pool] for r in res[m].values()]))
        rows.append(row)
    return rows, cols, stats


def diagnostic_rows(results: dict[str, dict[str, dict]], cols: list[str]) -> list[dict]:
    """The best of N of each generative method, per task (chosen on test data)."""
    rows = []
    for m, per_task in results.items():
        n = max(r["n"] for r in per_task.values())
        if n > 1:
            row = {"method": m, "label": f"{label(m)} (best of {n}), test-selected (diagnostic only)",
                   "kind": "best", "n": n, "runs": n_runs(per_task)}
            row.update({c: float(np.mean([r["best_of_n"][c] for r in per_task.values()])) for c in cols})
            rows.append(row)
    return rows


def ranked(rows: list[dict]) -> list[str]:
    """Methods that compete for best: not the Oracle (it trains on the task), not paper rows."""
    return [r["method"] for r in rows if r["kind"] in ("mean", "single")
            and (r["method"] not in METHODS or METHODS[r["method"]].ranked)]


def best_marks(rows: list[dict], cols: list[str], stats: dict[str, GroupStats]) -> dict[tuple[str, str], str]:
    """(method, column) -> "best" where the leader's paired interval against the runner-up
    excludes zero; otherwise "tied" for the leader and every method whose difference to it
    includes zero."""
    methods, out = ranked(rows), {}
    if len(methods) < 2:
        return out
    for c in cols:
        order = sorted(methods, key=lambda m: -stats[c].estimates[m])
        leader = order[0]
        if stats[c].difference(leader, order[1]).excludes_zero():
            out[(leader, c)] = "best"
        else:
            for m in order:
                if m == leader or not stats[c].difference(leader, m).excludes_zero():
                    out[(m, c)] = "tied"
    return out


def paper_rows(key: str | None, cols: list[str]) -> list[dict]:
    """The paper's published rows of table ``key`` (none without a key), labelled as the paper's."""
    if not key:
        return []
    if key not in PAPER_TABLES:
        raise SGLoraError(f"paper table {key!r} is unknown; known: {sorted(PAPER_TABLES)}")
    rows = []
    for m, vals in PAPER_TABLES[key]["rows"].items():
        rows.append({"method": m, "label": f"{label(m)} (paper)", "kind": "paper", "n": 0,
                     **{c: vals.get(c, float("nan")) for c in cols}})
    return rows


def paper_note(group: dict) -> str:
    """How our run differs from the paper's experiment: the group's ``paper_note`` if set,
    else what the tables know (the tasks evaluated here)."""
    key = group.get("paper")
    if not key:
        return ""
    tasks = group["tasks"]
    default = (f"Paper rows: copied from {PAPER_TABLES[key]['title']}. Ours: our run, not a reproduction: "
               f"{len(tasks)} task{'s' * (len(tasks) > 1)} of dataset {group['dataset']!r} "
               f"({', '.join(tasks)}), with this run's backbone, training epochs and captions, which may differ "
               "from the paper's; compare our rows with each other, the paper's only as context.")
    return f"{default} {group['paper_note'].strip()}" if group.get("paper_note") else default


def read_selection(path: str | Path) -> dict:
    """The ``chosen`` settings (method -> settings) of a ``selection.json``."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("chosen"), dict):
        raise SGLoraError(f"{path}: expected a JSON object with key 'chosen' (method -> chosen settings)")
    return doc["chosen"]


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v if not isinstance(v, (dict, list)) else json.dumps(v)}" for k, v in settings.items())


def selection_note(selection: dict | None, methods: list[str], paper: dict | None = None,
                   on: str = "the validation tasks") -> str:
    """"Settings chosen on the validation tasks: SG-LoRA: condition=loo, temperature=0.5; ...",
    and, when the group has the ``sglora_paper`` row, the fixed point it samples at (``paper``).
    ``on``: the tasks that chose them."""
    chosen = [(m, selection[m]) for m in methods if selection and selection.get(m)]
    notes = []
    if chosen:
        parts = [f"{label(m)}: " + _settings_text(settings) for m, settings in chosen]
        notes.append(f"Settings chosen on {on}: " + "; ".join(parts) + ".")
    if paper and "sglora_paper" in methods:
        notes.append(f"{label('sglora_paper')}: fixed at the paper's settings, not selected: {_settings_text(paper)}.")
    return " ".join(notes)


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.2f}"


def _cell(r: dict, c: str) -> str:
    """``19.17 [17.20, 21.10]``: the mean and its 95% interval (paper rows: the value)."""
    return _fmt(r[c]) + (f" [{r[c + '_lo']:.2f}, {r[c + '_hi']:.2f}]" if c + "_lo" in r else "")


TARGET_SE = 1.0  #: the standard error a group's mean should reach (percent points)


def _se_note(rows: list[dict], cols: list[str], results: dict[str, dict[str, dict]] | None = None,
             families: dict[str, str] | None = None, stats: dict[str, GroupStats] | None = None) -> str:
    """The standard error of a group's mean R@1 (bootstrap SD), measured and printed; with
    ``results``, where it exceeds ``TARGET_SE``, the independent units (families, with
    ``families``; else tasks) the group would need and how much of the worst method's spread
    more test images could not remove (:func:`sglora.evaluation.stats.power`). Pooled over
    training replicates (``stats`` with ``trainings``), the replicates' share of the variance
    is left out of what more units would shrink, and said."""
    primary = primary_cols(cols)
    have = [r for r in rows if primary[0] + "_se" in r]
    if not have:
        return ""
    parts = [f"{r['label']} " + " / ".join(f"{r[c + '_se']:.2f}" for c in primary) for r in have]
    largest = max(r[c + "_se"] for r in have for c in primary)
    note = (f"Standard error of the mean {' / '.join(COL_NAMES[c] for c in primary)} (bootstrap SD): "
            + "; ".join(parts) + f" (largest {largest:.2f}).")
    if results and largest > TARGET_SE:
        worst = max(((r, c) for r in have for c in primary), key=lambda rc: rc[0][rc[1] + "_se"])
        per_task = results[worst[0]["method"]]
        split = power(run_hits(per_task, worst[1], worst[0]["method"]), family_labels(families, list(per_task)))
        share = stats[worst[1]].training_share(worst[0]["method"]) if stats and worst[1] in stats else 0.0
        need = units_for(largest, split.units, TARGET_SE, fixed=share)
        if need is None:
            return note + (f" Of {worst[0]['label']}'s variance ({COL_NAMES[worst[1]]}), the training replicates add "
                           f"{100 * share:.0f} %, alone more than an SE of {TARGET_SE:.1f} allows: it takes more "
                           "training replicates.")
        if share:
            note += (f" Of {worst[0]['label']}'s variance ({COL_NAMES[worst[1]]}), the training replicates add "
                     f"{100 * share:.0f} %, which more units leave as it is.")
        if split.unit == "family":
            size = len(per_task) / split.units
            count = (f"{need} families (of {size:.3g} tasks each, like its own); it has {split.units} families "
                     f"of its {len(per_task)} tasks")
        else:
            count = f"{need} tasks; it has {split.units}"
        note += (f" For an SE <= {TARGET_SE:.1f} for every method this group needs about {count}. Of the spread of "
                 f"{worst[0]['label']}'s {split.unit} means ({COL_NAMES[worst[1]]}), {100 * split.between_share:.0f}% "
                 f"is between {'families' if split.unit == 'family' else 'tasks'}, which more test images per task "
                 "cannot remove (sglora.evaluation.stats.power).")
    return note


def target_note(stats: dict[str, GroupStats], cols: list[str], target: float, method: str = "sglora",
                against: str = "nearest_expert") -> str:
    """Whether the paired 95% interval of ``method`` minus ``against`` is as narrow as the
    ``target`` half-width (percent points) on the group's R@1 columns (or accuracy), and where
    it is not, about how many independent units (families, or tasks) like the group's own
    would make it so: the half-width falls as 1 / sqrt(units) (:func:`units_for`)."""
    primary = [c for c in primary_cols(cols) if c in stats]
    halves = [(d.hi - d.lo) / 2 for d in (stats[c].difference(method, against) for c in primary)]
    first = stats[primary[0]]
    units = n_units(first.families, first.tasks)
    unit = "tasks" if clusters(first.families, first.tasks) is None else "families"
    names = " / ".join(COL_NAMES[c] for c in primary)
    text = (f"Target (evaluation.target_half_width): a paired 95% interval of {label(method)} − {label(against)} no "
            f"wider than ±{target:.2f} on {names}. Here ±" + " / ±".join(f"{h:.2f}" for h in halves))
    if max(halves) <= target:
        return text + ": met."
    worst = max(range(len(halves)), key=lambda i: halves[i])
    share = stats[primary[worst]].training_share(method, against)
    need = units_for(halves[worst], units, target, fixed=share)
    if not first.trainings:
        return text + f": missed; about {need} {unit} like these would meet it (the group has {units})."
    rest = "families, tasks and queries" if unit == "families" else "tasks and queries"
    part = (f" The training replicates add {100 * share:.0f} % of the variance of the wider one (the rest: the "
            f"{rest}), a part more {unit} leave as it is")
    if need is None:
        return text + f": missed.{part}, and alone wider than the target: it takes more training replicates."
    return (text + f": missed.{part}: about {need} {unit} like these, with {len(first.trainings)} replicates, "
            f"would meet it (the group has {units}).")


#: The small-sample widening of the replicates (:func:`sglora.evaluation.stats.widening`), in the captions.
WIDENED = "widened by sqrt(n/(n-1)) for the n units drawn first"


def _cells_caption(resampled: str) -> str:
    return f"Cells: mean over the group's tasks [95% bootstrap interval, {WIDENED}; resampled: {resampled}]."


def render(rows: list[dict], cols: list[str], title: str, marks: dict[tuple[str, str], str] | None = None,
           notes: list[str] = (), resampled: str | None = None) -> dict[str, str]:
    """CSV (value, lo, hi, se, std columns), Markdown and LaTeX; ``marks`` from :func:`best_marks`,
    ``notes`` printed under the table; ``resampled``: what the bootstrap resampled
    (``GroupStats.resampled``; None: the tasks, as independent units)."""
    marks = marks or {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = [f"{c}_{x}" for x in ("lo", "hi", "se", "std") for c in cols]
    w.writerow(["method", "label", "kind", "n", "runs"] + cols + extra)
    for r in rows:
        w.writerow([r["method"], r["label"], r["kind"], r["n"], r.get("runs", "")] + [f"{r[c]:.4f}" for c in cols]
                   + [f"{r[k]:.4f}" if k in r else "" for k in extra])
    tied = any(v == "tied" for v in marks.values())
    legend = [n for n in notes if n]
    if marks:
        legend.insert(0, "**Bold**: best, its paired 95% interval against the runner-up excludes 0"
                      + ("; †: tied for best: interval of the difference includes 0" if tied else "")
                      + ". The Oracle (trained on the task's own data) and paper rows are not ranked.")
    md = [f"**{title}**", "", "| Method | " + " | ".join(COL_NAMES[c] for c in cols) + " |",
          "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            s, mark = _cell(r, c), marks.get((r["method"], c)) if r["kind"] != "paper" else None
            cells.append({"best": f"**{s}**", "tied": f"{s}†"}.get(mark, s))
        md.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    footer = [_cells_caption(resampled or "tasks, test queries and runs")]
    footer += legend
    for line in footer:
        md += ["", line]
    tex = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex_escape(title)}}}",
           "\\begin{tabular}{l" + "r" * len(cols) + "}", "\\toprule",
           "Method & " + " & ".join(COL_NAMES[c] for c in cols) + " \\\\", "\\midrule"]
    for i, r in enumerate(rows):
        if r["kind"] == "paper" and (i == 0 or rows[i - 1]["kind"] != "paper"):
            tex.append("\\midrule")
        cells = []
        for c in cols:
            s, mark = _cell(r, c), marks.get((r["method"], c)) if r["kind"] != "paper" else None
            cells.append({"best": f"\\textbf{{{s}}}", "tied": f"{s}$^\\dagger$"}.get(mark, s))
        tex.append(_tex_escape(r["label"]) + " & " + " & ".join(cells) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}"]
    tex += ["\\par\\smallskip\\footnotesize " + _tex_escape(n.replace("**", "")).replace("†", "$^\\dagger$")
            for n in footer]
    tex += ["\\end{table}"]
    return {"csv": buf.getvalue(), "md": "\n".join(md) + "\n", "tex": "\n".join(tex) + "\n"}


def render_paired(rows: list[dict], cols: list[str], stats: dict[str, GroupStats], title: str,
                  method: str = "sglora", notes: list[str] = ()) -> dict[str, str]:
    """``method`` minus each other method of the group, per metric, with the paired interval,
    its standard error and the minimum detectable difference (``DETECTABLE`` x SE)."""
    name = label(method)
    others = [r for r in rows if r["method"] != method and r["kind"] in ("mean", "single")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    trainings = len(stats[cols[0]].trainings)
    w.writerow(["method", "label"] + [f"{c}{x}" for c in cols for x in ("", "_lo", "_hi", "_se", "_mdd")]
               + ([f"{c}_replicate_verdicts" for c in cols] if trainings else []))
    md = [f"**{title}: {name} minus each method**", "",
          "| Method | " + " | ".join(COL_NAMES[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in others:
        diffs = [stats[c].difference(method, r["method"]) for c in cols]
        each = [[verdict(t.difference(method, r["method"])) for t in stats[c].trainings] for c in cols]
        w.writerow([r["method"], r["label"]] + [f"{v:.4f}" for d in diffs
                                                for v in (d.estimate, d.lo, d.hi, d.se, d.detectable)]
                   + ([" ".join(v) for v in each] if trainings else []))
        md.append(f"| {name} − {r['label']} | " + " | ".join(
            f"{d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]" + ("*" if d.excludes_zero() else "")
            + f" (MDD {d.detectable:.2f})" + (f"; each replicate: {', '.join(v)}" if v else "")
            for d, v in zip(diffs, each)) + " |")
    md += ["", f"Cells: difference of the means [paired 95% bootstrap interval, {WIDENED}; resampled: "
           f"{stats[cols[0]].resampled}; "
           "the same draws for both methods, except each method's runs, drawn on their own]. *: the interval excludes "
           f"0. MDD: the minimum detectable difference, {DETECTABLE:.2f} x the paired SE (z 0.975 + z 0.80): a true "
           "difference this large is resolved with 80% power at the 5% level; a smaller one may go unseen."
           + (f" Each replicate: the verdict (win, tie or loss: its own interval above, across or below 0) of each of "
              f"the {trainings} training replicates alone, in order." if trainings else "")]
    for line in notes:
        md += ["", line] if line else []
    return {"csv": buf.getvalue(), "md": "\n".join(md) + "\n"}


#: the method each test task's verdict compares SG-LoRA with
VERDICT_AGAINST = "nearest_expert"


def task_verdicts(results: dict[str, dict[str, dict]], cols: list[str], method: str = "sglora",
                  against: str = VERDICT_AGAINST, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict]:
    """``method`` minus ``against`` on each task, per primary column: ``{column: {task:
    (Interval, verdict)}}`` (:func:`sglora.evaluation.stats.task_differences`, :func:`sglora.evaluation.stats.verdict`)."""
    return {c: {t: (d, verdict(d)) for t, d in task_differences(results[method], results[against], c, n_boot, seed,
                                                                 (method, against)).items()}
            for c in primary_cols(cols)}


def verdict_counts(verdicts: dict[str, dict]) -> dict[str, dict[str, int]]:
    """``{column: {"win": n, "tie": n, "loss": n}}`` of :func:`task_verdicts`."""
    return {c: {v: sum(1 for _, x in per.values() if x == v) for v in VERDICTS} for c, per in verdicts.items()}


PLURAL = {"win": "wins", "tie": "ties", "loss": "losses"}


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[v]} {v if counts[v] == 1 else PLURAL[v]}" for v in VERDICTS)


def verdicts_note(verdicts: dict[str, dict], group: str, method: str = "sglora", against: str = VERDICT_AGAINST) -> str:
    """The paired table's line of per-task wins, ties and losses."""
    counts = verdict_counts(verdicts)
    parts = [f"{COL_NAMES[c]} {_counts_text(n)}" for c, n in counts.items()]
    tasks = len(next(iter(verdicts.values())))
    return (f"Per task, {label(method)} − {label(against)} ({tasks} tasks; {group}.verdicts.md): " + "; ".join(parts)
            + ". Win: the task's paired 95% interval lies wholly above 0; loss: wholly below; tie: it includes 0.")


def render_verdicts(verdicts: dict[str, dict], title: str, method: str = "sglora",
                    against: str = VERDICT_AGAINST) -> dict[str, str]:
    """The per-task table of :func:`task_verdicts`: CSV and Markdown, its last row the counts."""
    cols = list(verdicts)
    tasks = list(next(iter(verdicts.values())))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task"] + [f"{c}{x}" for c in cols for x in ("", "_lo", "_hi", "_verdict")])
    md = [f"**{title}: {label(method)} minus {label(against)}, per task**", "",
          "| Task | " + " | ".join(COL_NAMES[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for t in tasks:
        w.writerow([t] + [x for c in cols for x in (f"{verdicts[c][t][0].estimate:.4f}", f"{verdicts[c][t][0].lo:.4f}",
                                                       f"{verdicts[c][t][0].hi:.4f}", verdicts[c][t][1])])
        md.append(f"| {t} | " + " | ".join(f"{d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] {v}"
                                           for d, v in (verdicts[c][t] for c in cols)) + " |")
    counts = verdict_counts(verdicts)
    md.append("| Wins / ties / losses | " + " | ".join(" / ".join(str(counts[c][v]) for v in VERDICTS) for c in cols)
              + " |")
    md += ["", "Cells: difference of the task's means [paired 95% bootstrap interval of that task alone; resampled: its "
           "test queries, the same draws for both methods, and each method's runs, drawn on their own; not widened]. "
           "Win: the interval lies wholly above 0; loss: wholly below; tie: it includes 0."]
    return {"csv": buf.getvalue(), "md": "\n".join(md) + "\n"}


def render_diagnostic(rows: list[dict], best: list[dict], cols: list[str], title: str, notes: list[str] = (),
                      resampled: str | None = None) -> str:
    """Every row of the main table, each generative method followed by its best of N;
    ``resampled`` as in :func:`render`."""
    md = [f"**{title}: diagnostic, with test-selected rows**", "",
          "| Method | " + " | ".join(COL_NAMES[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        md.append(f"| {r['label']} | " + " | ".join(_cell(r, c) for c in cols) + " |")
        for b in best:
            if b["method"] == r["method"] and r["kind"] != "paper":
                md.append(f"| {b['label']} | " + " | ".join(_fmt(b[c]) for c in cols) + " |")
    md += ["", _cells_caption(resampled or "tasks, test queries and runs") + " Test-selected rows: no interval."]
    md += ["", "Test-selected rows take, per task, the sample with the best test R@1 (or accuracy): they look at the "
           "test data and are not comparable to any other row." if best else
           "No method of this group draws several samples: nothing is test-selected."]
    for line in notes:
        md += ["", line] if line else []
    return "\n".join(md) + "\n"


def _tex_escape(s: str) -> str:
    return s.replace("&", "\\&").replace("%", "\\%").replace("_", "\\_").replace("#", "\\#")


def per_task_table(results: dict[str, dict[str, dict]], cols: list[str]) -> str:
    """Markdown: rows = tasks, columns = methods, cells = primary metric(s)."""
    primary = primary_cols(cols)
    methods = list(results)
    tasks = list(next(iter(results.values())))
    head = "| Task | " + " | ".join(f"{label(m)} {COL_NAMES[c]}" for m in methods for c in primary) + " |"
    lines = [head, "|---|" + "---:|" * (len(methods) * len(primary))]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_fmt(results[m][t]["mean"][c]) for m in methods for c in primary) + " |")
    return "\n".join(lines) + "\n"


def write_tables(metrics: dict[str, str | Path], out_dir: str | Path, groups: dict, selection: dict | None = None,
                 n_boot: int = N_BOOT, seed: int = 0, paper: dict | None = None, embedded: Collection[str] = (),
                 unit: str = "family", group_selections: dict[str, dict] | None = None,
                 target: float | None = None, pool: list[dict[str, str | Path]] = ()) -> None:
    """For each group: ``<group>.{csv,md,tex}``, ``<group>.per_task.md``, ``<group>.diagnostic.md``;
    where the group has SG-LoRA, ``<group>.paired.{csv,md}``; where it also has the nearest
    expert, ``<group>.verdicts.{csv,md}`` (:func:`task_verdicts`), counted in the paired table. A group's ``paper`` key
    (``sglora.paper.PAPER_TABLES``) adds the published rows and a note on how our run differs
    (``paper_note`` adds to it). ``selection``: method -> settings chosen on the validation
    tasks, footnoted under every table; ``paper``: the fixed settings of the ``sglora_paper``
    row (footnoted where a group has it). ``n_boot``, ``seed``: the bootstrap's replicates and draws;
    ``unit``: what a replicate draws first, "family" (the families of :func:`group_families`;
    ``embedded``: the embedded datasets) or "task". ``metrics``: ``"<group>/<method>"`` ->
    metric folder (:func:`load_group`). ``group_selections``: group -> the settings chosen on
    that group's own validation tasks (config ``groups.<g>.validation``), footnoted instead of
    ``selection`` under its tables. ``target``: the half-width the paired interval of SG-LoRA
    minus the nearest expert should reach, noted under the paired tables (:func:`target_note`).
    ``pool``: the metric folders of training replicates 1, 2, ... (keyed as ``metrics``, which
    is replicate 0): then only ``<group>.{csv,md,tex}`` and ``<group>.paired.{csv,md}`` are
    written, every mean and interval pooled over the replicates
    (:func:`sglora.evaluation.stats.pooled_group_stats`), each replicate's verdict beside each
    paired difference."""
    if unit not in BOOTSTRAP_UNITS:
        raise SGLoraError(f"evaluation.bootstrap_unit: {unit!r}; expected one of {list(BOOTSTRAP_UNITS)}")
    # every metrics file of every group is read and checked, and every table made, before any is written
    loaded = {group: load_group(metrics, group, g["methods"], g["tasks"]) for group, g in groups.items()}
    pooled = {group: [load_group(m, group, g["methods"], g["tasks"]) for m in pool] for group, g in groups.items()}
    files: dict[str, str] = {}

    def write(name: str, text: str) -> None:
        files[name] = text

    for group, g in groups.items():
        results = loaded[group]
        families = group_families(g, embedded, group) if unit == "family" else None
        rows, cols, stats = summarize_group(results, n_boot, seed, families, pooled[group])
        marks = best_marks(rows, cols, stats)
        own = (group_selections or {}).get(group)
        own_tasks = ", ".join(g.get("validation", {}).get("tasks", []))
        on = "the validation tasks" if own is None else f"the group's own validation tasks ({own_tasks})"
        notes = [_se_note(rows, cols, results, families, stats if pool else None),
                 selection_note(selection if own is None else own, g["methods"], paper, on), paper_note(g)]
        title, resampled = g.get("title", group), stats[cols[0]].resampled
        if pool:
            title += f", pooled over {len(pool) + 1} training replicates"
        for ext, text in render(rows + paper_rows(g.get("paper") or None, cols), cols, title, marks, notes,
                                resampled).items():
            write(f"{group}.{ext}", text)
        judged = "sglora" in results and VERDICT_AGAINST in results and not pool
        verdicts = task_verdicts(results, cols, n_boot=n_boot, seed=seed) if judged else None
        if verdicts:
            for ext, text in render_verdicts(verdicts, title).items():
                write(f"{group}.verdicts.{ext}", text)
        if "sglora" in results:
            extra = [verdicts_note(verdicts, group)] if verdicts else []
            if target is not None and VERDICT_AGAINST in results:
                extra.append(target_note(stats, cols, target, against=VERDICT_AGAINST))
            for ext, text in render_paired(rows, cols, stats, title, notes=extra + notes[1:2]).items():
                write(f"{group}.paired.{ext}", text)
        if pool:
            continue
        write(f"{group}.diagnostic.md", render_diagnostic(rows, diagnostic_rows(results, cols), cols, title, notes[1:2],
                                                          resampled))
        write(f"{group}.per_task.md", f"**{title}: per task**\n\n" + per_task_table(results, cols)
              + "".join(f"\n{n}\n" for n in notes[1:2] if n))
    write_all(out_dir, files)


def write_all(out_dir: str | Path, files: dict[str, str]) -> None:
    """Write a set of text files as a whole: each goes to a temporary beside its name, and
    they are renamed into place only once all are written (an error keeps the old set)."""
    with contextlib.ExitStack() as stack:
        for name, text in files.items():
            stack.enter_context(atomic_path(Path(out_dir) / name)).write_text(text)
