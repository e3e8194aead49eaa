"""The comparison of LoRA spaces (``sglora.baselines.merging_spaces``) for every merging method.

For each merging method and each space, the method's own settings (its ``selection``
grid: k, tau) are chosen on the validation tasks *within that space*
(:func:`select_spaces`); each (method, space) is then evaluated once on a group's test
tasks with those settings (:func:`evaluate_spaces`), and :func:`space_table` prints the
validation score next to the test R@1 (95% bootstrap intervals) and the paired
difference of each space to the paper's ``factors`` space of the same method. The main
tables keep the paper-faithful rows (the factor space); this table is where the spaces
meet.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..io import SGLoraError, atomic_path, write_json
from ..baselines.merging_spaces import MERGING, SPACES, space_candidates

#: the settings a merging method's grid may vary in the space comparison
GRID_SETTINGS = {"model_soups": (), "adaptersoup": ("k",), "topk_weighted": ("k", "tau")}


def space_grid(method: str, grid: dict[str, list] | None) -> list[dict]:
    """The method's grid points (its ``selection`` axes it can vary here; ``[{}]`` for none)."""
    from ..evaluation.method_selection import grid_points

    axes = {k: v for k, v in (grid or {}).items() if k in GRID_SETTINGS[method]}
    return grid_points(axes)


def row_name(method: str, space: str) -> str:
    """The table row of a merging method in a space (``topk_weighted.product``)."""
    return f"{method}.{space}"


def _candidates(method, space, settings, tasks, experts, layout, embeddings, prior, seen=False):
    from dataclasses import replace

    p = replace(prior, **{k: settings[k] for k in ("k", "tau") if k in settings})
    return space_candidates(method, space, tasks, experts, layout, embeddings, p, seen=seen)


def select_spaces(backbone: str, manifest: str | Path, tasks: list[str], methods: list[str], spaces: list[str],
                  grids: dict[str, dict], experts, layout, embeddings: dict[str, dict], prior, scaling: float,
                  threads: int | None = None, device: str = "auto", cache: str | Path | None = None,
                  gallery: int = 0) -> dict:
    """Score every grid point of every (method, space) on the validation ``tasks``; keep the best
    per (method, space) (ties: the first in grid order, like ``selection.select_settings``).

    Returns ``{"chosen": {method: {space: settings}}, "scores": {method: {space: [{"settings",
    "score", "per_task"}]}}, "tasks", "criterion"}``."""
    import torch

    from ..backbone.clip import load_clip
    from ..devices import pick_device
    from ..evaluation.scoring import evaluate_vectors, load_task
    from ..evaluation.method_selection import primary_score

    _check(methods, spaces)
    if threads:
        torch.set_num_threads(threads)
    model, processor = load_clip(backbone, device=pick_device(device))
    data = {t: load_task(manifest, t, processor, cache=cache, workers=threads or 0, gallery=gallery) for t in tasks}
    chosen, scores = {}, {}
    for method in methods:
        for space in spaces:
            rows = []
            for settings in space_grid(method, grids.get(method)):
                vecs, lay, _ = _candidates(method, space, settings, tasks, experts, layout, embeddings, prior)
                per_task = {t: float(np.mean([primary_score(m) for m in
                                              evaluate_vectors(model, processor, data[t], vecs[t], lay, scaling)]))
                            for t in tasks}
                rows.append({"settings": settings, "score": float(np.mean(list(per_task.values()))), "per_task": per_task})
            best = max(range(len(rows)), key=lambda i: (rows[i]["score"], -i))
            chosen.setdefault(method, {})[space] = rows[best]["settings"]
            scores.setdefault(method, {})[space] = rows
    return {"chosen": chosen, "scores": scores, "tasks": list(tasks),
            "criterion": "mean over validation tasks of (I2T R@1 + T2I R@1) / 2, or accuracy"}


def _check(methods, spaces):
    bad = [m for m in methods if m not in MERGING] + [s for s in spaces if s not in SPACES]
    if bad:
        raise SGLoraError(f"spaces: {bad} unknown; methods: {MERGING}, spaces: {SPACES}")
    if "factors" not in spaces:
        raise SGLoraError("spaces.compare must include 'factors' (the paper's space, the reference of the comparison)")


def evaluate_spaces(backbone: str, manifest: str | Path, tasks: list[str], selection: dict, experts, layout,
                    embeddings: dict[str, dict], prior, scaling: float, out_dir: str | Path, group: str = "",
                    seen: bool = False, threads: int | None = None, device: str = "auto",
                    cache: str | Path | None = None, gallery: int = 0) -> dict:
    """Each (method, space) of ``selection`` with its chosen settings on ``tasks``: writes
    ``out_dir/candidates/<method>.<space>.safetensors`` and ``out_dir/metrics/<method>.<space>/<task>.json``
    (the format of ``sglora evaluate``). Returns ``{row: {task: mean metrics}}``."""
    import torch

    from ..backbone.clip import load_clip
    from ..devices import pick_device
    from ..generator.candidates import save_candidates
    from ..evaluation.scoring import evaluate_queries, load_task, summarize

    if threads:
        torch.set_num_threads(threads)
    model, processor = load_clip(backbone, device=pick_device(device))
    out_dir = Path(out_dir)
    rows = {}
    for method, by_space in selection["chosen"].items():
        for space, settings in by_space.items():
            vecs, lay, info = _candidates(method, space, settings, tasks, experts, layout, embeddings, prior, seen)
            for t in info:
                info[t]["settings"] = settings
            save_candidates(out_dir / "candidates" / f"{row_name(method, space)}.safetensors", vecs, lay, method, info,
                            scaling=scaling)
            rows[row_name(method, space)] = (vecs, lay, info)
    results = {}
    for t in tasks:
        data = load_task(manifest, t, processor, cache=cache, workers=threads or 0, gallery=gallery)
        for name, (vecs, lay, info) in rows.items():
            per = evaluate_queries(model, processor, data, vecs[t], lay, scaling)
            res = {"method": name, "group": group, "task": t, "kind": data.kind, **summarize(per), "info": info[t]}
            write_json(out_dir / "metrics" / name / f"{t}.json", res, flat_int_lists=True)
            results.setdefault(name, {})[t] = res["mean"]
    return results


def space_table(metrics_dir: str | Path, selection: dict, tasks: list[str], title: str, n_boot: int = 2000,
                seed: int = 0) -> dict[str, str]:
    """Markdown and CSV: per merging method and space, the validation score of its chosen
    settings, the test R@1 (or accuracy) with 95% intervals, and the paired difference to
    the same method in the factor space."""
    from ..evaluation.stats import group_stats
    from ..methods import label
    from .tables import metric_cols

    order = _ordered(selection)
    names = [row_name(m, s) for m, s in order]
    results = _load(Path(metrics_dir), names, tasks)
    cols = ["accuracy"] if metric_cols(results) == ["accuracy"] else ["i2t_r1", "t2i_r1"]
    stats = {c: group_stats(results, c, n_boot, seed) for c in cols}
    head = {"i2t_r1": "I2T R@1", "t2i_r1": "T2I R@1", "accuracy": "Accuracy"}
    md = [f"**{title}: LoRA spaces of the merging methods**", "",
          "| Method | Space | Settings (validation) | Validation score | "
          + " | ".join(f"{head[c]} (test)" for c in cols) + " | "
          + " | ".join(f"{head[c]} − factors" for c in cols) + " |",
          "|---|---|---|---:|" + "---:|" * (2 * len(cols))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "space", "settings", "validation"] + [f"{c}{x}" for c in cols for x in ("", "_lo", "_hi")]
               + [f"{c}_minus_factors{x}" for c in cols for x in ("", "_lo", "_hi")])
    for method, space in order:
        settings = selection["chosen"][method][space]
        name, ref = row_name(method, space), row_name(method, "factors")
        val = next(r["score"] for r in selection["scores"][method][space] if r["settings"] == settings)
        ivs = [stats[c].interval(name) for c in cols]
        diffs = [stats[c].difference(name, ref) for c in cols]
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"
        md.append(f"| {label(method)} | {space} | {shown} | {val:.2f} | "
                  + " | ".join(str(iv) for iv in ivs) + " | "
                  + " | ".join("-" if space == "factors" else
                               f"{d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]" + ("*" if d.excludes_zero() else "")
                               for d in diffs) + " |")
        w.writerow([method, space, shown, f"{val:.4f}"] + [f"{x:.4f}" for iv in ivs for x in (iv.estimate, iv.lo, iv.hi)]
                   + [f"{x:.4f}" for d in diffs for x in (d.estimate, d.lo, d.hi)])
    md += ["", "Spaces: factors = the paper's flat [A, B] vector averaged coordinate-wise; product = the exact "
           "weighted average of the updates B·A as one adapter of rank K·r; product_svd = that average truncated "
           "to rank r by SVD. Each (method, space) has its settings chosen on the validation tasks within its space "
           "(score: mean of I2T and T2I R@1, or accuracy). Test cells: mean over tasks [95% bootstrap interval over "
           "tasks and test queries]; − factors: paired difference to the same method in the factor space "
           "[paired 95% interval]; *: the interval excludes 0."]
    return {"md": "\n".join(md) + "\n", "csv": buf.getvalue()}


def _ordered(selection: dict) -> list[tuple[str, str]]:
    """(method, space) rows in the order of ``MERGING`` and ``SPACES`` (the selection JSON is key-sorted)."""
    chosen = selection["chosen"]
    return [(m, s) for m in MERGING if m in chosen for s in SPACES if s in chosen[m]]


def _load(root: Path, names: list[str], tasks: list[str]) -> dict[str, dict[str, dict]]:
    import json

    out = {}
    for n in names:
        for t in tasks:
            path = root / n / f"{t}.json"
            if not path.exists():
                raise SGLoraError(f"{path}: metrics file missing (space row {n!r}, task {t!r})")
            out.setdefault(n, {})[t] = json.loads(path.read_text())
    return out


def write_space_table(metrics_dir, selection: dict, tasks: list[str], title: str, out_md, out_csv,
                      n_boot: int = 2000) -> None:
    """Write the table of spaces (Markdown and CSV) from the metric folders of every (method, space)."""
    text = space_table(metrics_dir, selection, tasks, title, n_boot)
    for path, key in ((out_md, "md"), (out_csv, "csv")):
        with atomic_path(path) as tmp:
            tmp.write_text(text[key])


def runs_table(runs: dict[str, dict[str, str | Path]], group: str, methods: list[str], tasks: list[str], title: str,
               selections: dict[str, dict] | None = None, reference: str = "factors", n_boot: int = 2000,
               seed: int = 0) -> dict[str, str]:
    """Two runs of one world that differ in their LoRA space (e.g. ``factors`` = the default
    run, ``frozen_a`` = experts trained with A frozen): each method of ``group`` in each run,
    the validation-chosen settings, the test R@1 with 95% intervals, and the paired
    difference to the ``reference`` run (the same test queries: same world, same seeds).
    ``runs``: space -> method -> the run's metrics folder of that method (``<task>.json``
    files); ``selections``: space -> its ``chosen`` settings."""
    from ..evaluation.stats import group_stats
    from ..methods import label
    from .tables import metric_cols

    if reference not in runs:
        raise SGLoraError(f"compare runs: the reference space {reference!r} is not among {sorted(runs)}")
    results = {}
    for space, folders in runs.items():
        for m in methods:
            if m not in folders:
                raise SGLoraError(f"compare runs: no metrics folder of method {m!r} for the run {space!r}")
            for t in tasks:
                path = Path(folders[m]) / f"{t}.json"
                if not path.exists():
                    raise SGLoraError(f"{path}: metrics file missing (run {space!r}, method {m!r}, task {t!r}); "
                                      "run that configuration first")
                import json

                results.setdefault(f"{m}@{space}", {})[t] = json.loads(path.read_text())
    cols = ["accuracy"] if metric_cols(results) == ["accuracy"] else ["i2t_r1", "t2i_r1"]
    stats = {c: group_stats(results, c, n_boot, seed) for c in cols}
    head = {"i2t_r1": "I2T R@1", "t2i_r1": "T2I R@1", "accuracy": "Accuracy"}
    md = [f"**{title}: LoRA spaces, run against run**", "",
          "| Method | Space | Settings (validation) | " + " | ".join(head[c] for c in cols) + " | "
          + " | ".join(f"{head[c]} − {reference}" for c in cols) + " |", "|---|---|---|" + "---:|" * (2 * len(cols))]
    for m in methods:
        for space in runs:
            name, ref = f"{m}@{space}", f"{m}@{reference}"
            settings = (selections or {}).get(space, {}).get(m, {})
            shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"
            diffs = [stats[c].difference(name, ref) for c in cols]
            md.append(f"| {label(m)} | {space} | {shown} | " + " | ".join(str(stats[c].interval(name)) for c in cols)
                      + " | " + " | ".join("-" if space == reference else
                                          f"{d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]" + ("*" if d.excludes_zero() else "")
                                          for d in diffs) + " |")
    md += ["", f"Each run chose its settings on its own validation tasks. Cells: mean over tasks [95% bootstrap interval "
           f"over tasks, test queries and runs]; − {reference}: paired difference to the same method of the {reference} "
           "run (same tasks and test queries) [paired 95% interval]; *: the interval excludes 0."]
    return {"md": "\n".join(md) + "\n"}


def write_runs_table(out: str | Path, runs: dict[str, dict[str, str | Path]], group: str, methods: list[str],
                     tasks: list[str], title: str, selections: dict[str, str | Path], reference: str = "factors",
                     n_boot: int = 2000) -> None:
    """Write :func:`runs_table`'s Markdown to ``out``; ``selections``: each run's selection.json
    (its chosen settings are footnoted)."""
    from ..io import read_json

    chosen = {k: read_json(v).get("chosen", {}) for k, v in selections.items()}
    text = runs_table(runs, group, methods, tasks, title, chosen, reference, n_boot)["md"]
    with atomic_path(out) as tmp:
        tmp.write_text(text)
