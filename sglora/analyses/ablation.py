"""The ablation table of SG-LoRA's generator variants (like supplementary Tables 11-12).

One row per point of SG-LoRA's selection grid (condition, k, tau, augment, describe,
temperature, average), with its validation score (the selection criterion, percent), a 95%
bootstrap interval over the validation tasks, and the paired difference to the
paper-faithful point (the same task draws for every row). The point chosen on validation
and the paper-faithful point are marked. Everything comes from ``selection/sglora.json``:
no test task is read, so the table says which variant wins on validation, not on test.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..io import SGLoraError, atomic_path

N_BOOT = 2000  #: bootstrap replicates over validation tasks


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(float(a) - float(b)) < 1e-12


def matches(settings: dict, point: dict) -> bool:
    """``settings`` is ``point`` on every key it names (a key ``point`` lacks never matches)."""
    return all(key in point and _same(value, point[key]) for key, value in settings.items())


def ablation_rows(selection: dict, paper: dict, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Every SG-LoRA grid point of a selection file with its validation score, interval,
    difference to the paper-faithful point and marks (``chosen``, ``paper``)."""
    rows = selection.get("scores", {}).get("sglora")
    if not rows:
        raise SGLoraError("ablation: the selection file has no SG-LoRA scores (scores.sglora)")
    tasks = list(selection.get("tasks") or rows[0]["per_task"])
    chosen = selection.get("chosen", {}).get("sglora", {})
    scores = np.array([[row["per_task"][t] for t in tasks] for row in rows], np.float64)  # points x tasks
    draws = np.random.default_rng(seed).integers(0, len(tasks), size=(n_boot, len(tasks)))
    boot = scores[:, draws].mean(-1)  # points x replicates, shared task draws: paired
    paper_at = next((i for i, row in enumerate(rows) if matches(row["settings"], paper)), None)
    out = []
    for i, row in enumerate(rows):
        lo, hi = np.percentile(boot[i], [2.5, 97.5])
        item = {"settings": row["settings"], "score": float(row["score"]), "low": float(lo), "high": float(hi),
                "chosen": row["settings"] == chosen, "paper": i == paper_at, "difference": None}
        if paper_at is not None and i != paper_at:
            d = boot[i] - boot[paper_at]
            dlo, dhi = np.percentile(d, [2.5, 97.5])
            item["difference"] = (float(row["score"] - rows[paper_at]["score"]), float(dlo), float(dhi))
        out.append(item)
    return out


def _fmt(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def render_ablation(rows: list[dict], paper: dict, title: str = "SG-LoRA generator variants",
                    tasks: int | None = None) -> dict[str, str]:
    """``{"md": ..., "csv": ...}`` of :func:`ablation_rows`."""
    keys = list(rows[0]["settings"])
    head = keys + ["validation score", "95% CI", "Δ vs paper-faithful (95% CI)", "row"]
    md = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys + ["score", "low", "high", "difference", "difference_low", "difference_high", "chosen", "paper"])
    for r in rows:
        mark = ", ".join(m for m, on in (("chosen on validation", r["chosen"]), ("paper-faithful", r["paper"])) if on)
        diff = "" if r["difference"] is None else "{:+.2f} [{:+.2f}, {:+.2f}]".format(*r["difference"])
        cells = [_fmt(r["settings"][k]) for k in keys] + [f"{r['score']:.2f}", f"[{r['low']:.2f}, {r['high']:.2f}]",
                                                          diff, mark]
        score = f"**{r['score']:.2f}**" if r["chosen"] else f"{r['score']:.2f}"
        cells[len(keys)] = score
        md.append("| " + " | ".join(cells) + " |")
        d = r["difference"] or ("", "", "")
        w.writerow([_fmt(r["settings"][k]) for k in keys] + [f"{r['score']:.4f}", f"{r['low']:.4f}", f"{r['high']:.4f}"]
                   + [f"{x:.4f}" if x != "" else "" for x in d] + [int(r["chosen"]), int(r["paper"])])
    md += ["", f"Validation score: the selection criterion (mean over {tasks or 'the'} validation tasks and samples of "
           "(I2T R@1 + T2I R@1) / 2, or accuracy), in percent; intervals resample validation tasks "
           "(paired across rows). Bold: the point chosen on validation, used on every test group.",
           "Paper-faithful: " + ", ".join(f"{k}={_fmt(v)}" for k, v in paper.items())
           + ("" if any(r["paper"] for r in rows) else " — not a point of this grid.")]
    return {"md": "\n".join(md) + "\n", "csv": buf.getvalue()}


def write_ablation(selection: dict, paper: dict, markdown: str | Path, csv_path: str | Path,
                   title: str = "SG-LoRA generator variants", n_boot: int = N_BOOT) -> dict:
    """Write the ablation table of SG-LoRA's selection (Markdown and CSV); returns its number
    of points, the chosen point and whether the paper-faithful point is in the grid."""
    rows = ablation_rows(selection, paper, n_boot=n_boot)
    text = render_ablation(rows, paper, title, tasks=len(selection.get("tasks") or []))
    for path, body in ((markdown, text["md"]), (csv_path, text["csv"])):
        with atomic_path(path) as tmp:
            tmp.write_text(body)
    return {"points": len(rows), "chosen": next(r["settings"] for r in rows if r["chosen"]),
            "paper_in_grid": any(r["paper"] for r in rows)}


__all__ = ["ablation_rows", "render_ablation", "write_ablation", "matches", "N_BOOT"]
