"""Metric tables from the per-(method, task) metric files: CSV, Markdown and LaTeX.

One table per evaluation group (in-dataset, cross-dataset, seen tasks, ...), rows =
methods, columns = I2T/T2I Recall@1/5/10 (or accuracy), averaged over the group's tasks;
plus a per-task table, since averages hide failures.

Generative methods (SG-LoRA, P-diff, COND P-Diff) draw N samples per task: their main row
is the mean over samples (with the spread over samples); the best of N is a separate
row, labelled, because choosing it looks at test data. Bold / underline mark the best /
second best among the methods that do not see the task's data (so not the Oracle and not
best-of-N rows). Published numbers, where the paper has the table, follow as
"(paper)" rows.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .io import SGLoraError, atomic_path
from .paper import PAPER_TABLES

NAMES = {
    "zero_shot": "Zero-Shot CLIP", "oracle": "Oracle", "model_soups": "Model Soups", "adaptersoup": "AdapterSoup",
    "topk_weighted": "Top-K LoRA Weighted", "mole": "MoLE", "pdiff": "P-diff", "cond_pdiff": "COND P-Diff",
    "sglora": "SG-LoRA",
}
RETRIEVAL_COLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
COL_NAMES = {"i2t_r1": "I2T R@1", "i2t_r5": "I2T R@5", "i2t_r10": "I2T R@10", "t2i_r1": "T2I R@1",
             "t2i_r5": "T2I R@5", "t2i_r10": "T2I R@10", "accuracy": "Accuracy"}
EXCLUDED_FROM_RANKING = ("oracle",)


def load_group(metrics_root: Path, group: str, methods: list[str], tasks: list[str]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for m in methods:
        for t in tasks:
            path = metrics_root / group / m / f"{t}.json"
            if not path.exists():
                raise SGLoraError(f"{path}: metrics file missing (method {m!r}, task {t!r})")
            out.setdefault(m, {})[t] = json.loads(path.read_text())
    return out


def summarize_group(results: dict[str, dict[str, dict]]) -> tuple[list[dict], list[str]]:
    """Rows ``{method, label, kind, n, <metric>: value, <metric>_std: value}``."""
    first = next(iter(next(iter(results.values())).values()))
    cols = ["accuracy"] if first["kind"] == "classification" else RETRIEVAL_COLS
    rows = []
    for m, per_task in results.items():
        n = max(r["n"] for r in per_task.values())
        base = {"method": m, "label": NAMES.get(m, m), "kind": "mean" if n > 1 else "single", "n": n}
        base.update({c: float(np.mean([r["mean"][c] for r in per_task.values()])) for c in cols})
        if n > 1:
            base["label"] += f" (mean of {n})"
            base.update({f"{c}_std": float(np.mean([r["std"][c] for r in per_task.values()])) for c in cols})
        rows.append(base)
        if n > 1:
            best = {"method": m, "label": NAMES.get(m, m) + f" (best of {n}, test-selected)", "kind": "best", "n": n}
            best.update({c: float(np.mean([r["best_of_n"][c] for r in per_task.values()])) for c in cols})
            rows.append(best)
    return rows, cols


def _ranks(rows: list[dict], cols: list[str]) -> dict[tuple[int, str], int]:
    """(row index, column) -> 1 for the best, 2 for the second, among ranked rows."""
    out = {}
    for c in cols:
        vals = sorted({round(r[c], 2) for r in rows if r["kind"] != "best" and r["method"] not in EXCLUDED_FROM_RANKING
                       and r["kind"] != "paper"}, reverse=True)
        for i, r in enumerate(rows):
            if r["kind"] in ("best", "paper") or r["method"] in EXCLUDED_FROM_RANKING:
                continue
            v = round(r[c], 2)
            if vals and v == vals[0]:
                out[(i, c)] = 1
            elif len(vals) > 1 and v == vals[1]:
                out[(i, c)] = 2
    return out


def paper_rows(key: str | None, cols: list[str]) -> list[dict]:
    if not key:
        return []
    if key not in PAPER_TABLES:
        raise SGLoraError(f"paper table {key!r} is unknown; known: {sorted(PAPER_TABLES)}")
    rows = []
    for m, vals in PAPER_TABLES[key]["rows"].items():
        rows.append({"method": m, "label": f"{NAMES.get(m, m)} (paper)", "kind": "paper", "n": 0,
                     **{c: vals.get(c, float("nan")) for c in cols}})
    return rows


def _fmt(v: float, std: float | None = None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def render(rows: list[dict], cols: list[str], title: str) -> dict[str, str]:
    ranks = _ranks(rows, cols)
    # CSV
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "label", "kind", "n"] + cols + [f"{c}_std" for c in cols])
    for r in rows:
        w.writerow([r["method"], r["label"], r["kind"], r["n"]] + [f"{r[c]:.4f}" for c in cols]
                   + [f"{r[c + '_std']:.4f}" if c + "_std" in r else "" for c in cols])
    # Markdown
    md = [f"**{title}**", "", "| Method | " + " | ".join(COL_NAMES[c] for c in cols) + " |",
          "|---|" + "---:|" * len(cols)]
    for i, r in enumerate(rows):
        cells = []
        for c in cols:
            s = _fmt(r[c], r.get(c + "_std"))
            cells.append({1: f"**{s}**", 2: f"<u>{s}</u>"}.get(ranks.get((i, c)), s))
        md.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    # LaTeX (booktabs)
    tex = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex_escape(title)}}}",
           "\\begin{tabular}{l" + "r" * len(cols) + "}", "\\toprule",
           "Method & " + " & ".join(COL_NAMES[c] for c in cols) + " \\\\", "\\midrule"]
    for i, r in enumerate(rows):
        if r["kind"] == "paper" and (i == 0 or rows[i - 1]["kind"] != "paper"):
            tex.append("\\midrule")
        cells = []
        for c in cols:
            s = _fmt(r[c], r.get(c + "_std")).replace("±", "$\\pm$")
            cells.append({1: f"\\textbf{{{s}}}", 2: f"\\underline{{{s}}}"}.get(ranks.get((i, c)), s))
        tex.append(_tex_escape(r["label"]) + " & " + " & ".join(cells) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return {"csv": buf.getvalue(), "md": "\n".join(md) + "\n", "tex": "\n".join(tex) + "\n"}


def _tex_escape(s: str) -> str:
    return s.replace("&", "\\&").replace("%", "\\%").replace("_", "\\_").replace("#", "\\#")


def per_task_table(results: dict[str, dict[str, dict]], cols: list[str]) -> str:
    """Markdown: rows = tasks, columns = methods, cells = primary metric(s)."""
    primary = ["accuracy"] if cols == ["accuracy"] else ["i2t_r1", "t2i_r1"]
    methods = list(results)
    tasks = list(next(iter(results.values())))
    head = "| Task | " + " | ".join(f"{NAMES.get(m, m)} {COL_NAMES[c]}" for m in methods for c in primary) + " |"
    lines = [head, "|---|" + "---:|" * (len(methods) * len(primary))]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_fmt(results[m][t]["mean"][c]) for m in methods for c in primary) + " |")
    return "\n".join(lines) + "\n"


def write_tables(metrics_root: str | Path, out_dir: str | Path, groups: dict) -> None:
    """For each group: ``<group>.csv``, ``<group>.md``, ``<group>.tex``, ``<group>.per_task.md``;
    a group's ``paper`` key (``sglora.paper.PAPER_TABLES``) adds the published rows."""
    metrics_root, out_dir = Path(metrics_root), Path(out_dir)
    for group, g in groups.items():
        results = load_group(metrics_root, group, g["methods"], g["tasks"])
        rows, cols = summarize_group(results)
        rows += paper_rows(g.get("paper") or None, cols)
        title = g.get("title", group)
        for ext, text in render(rows, cols, title).items():
            with atomic_path(out_dir / f"{group}.{ext}") as tmp:
                tmp.write_text(text)
        with atomic_path(out_dir / f"{group}.per_task.md") as tmp:
            tmp.write_text(f"**{title}: per task**\n\n" + per_task_table(results, cols))
