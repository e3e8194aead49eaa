"""Steps of workflow/studies/: the repository-size study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated as A

from ..io import read_json
from .registry import Out, step


@step("study-config")
def study_config(base: A[Path, "the base pipeline config (YAML)"],
                 experts_per_family: A[int, "experts kept per family (the first ones listed)"],
                 results: A[str, "the size's results folder"], out: A[Path, "the derived config (YAML)"]) -> dict:
    """Repository-size study: one size's pipeline config, the base config with the first N
    experts of every family and its own results folder."""
    from ..analyses.studies import write_size_config

    cfg = write_size_config(base, experts_per_family, results, out)
    return {"experts_per_family": experts_per_family, "experts": cfg["experts"]["tasks"]}


@step("study-collect")
def study_collect(config: A[Path, "the size's pipeline config (its experts are recorded)"],
                  experts_per_family: A[int, "the size"],
                  metrics: A[dict[str, Path], "metrics files of the compared methods", {"metavar": "METHOD/TASK=FILE"}],
                  out: Out) -> dict:
    """Repository-size study: one size's compared metrics files, collected into one JSON."""
    from ..analyses.studies import write_size_collection

    write_size_collection(config, experts_per_family, metrics, out)
    return {"experts_per_family": experts_per_family, "files": len(metrics)}


@step("study-summary")
def study_summary(sizes: A[list[Path], "collected size files (sglora study-collect)"],
                  markdown: A[Path, "the table (Markdown)"], out: A[Path, "the table's numbers (JSON)"],
                  figures: A[Path, "figure folder (repository_size.png/.pdf)"],
                  against: A[list[str], "methods SG-LoRA is compared with"] = ("topk_weighted", "oracle"),
                  title: A[str, "the table's title"] = "Repository size",
                  bootstrap: A[int, "bootstrap replicates of the 95% intervals"] = 2000) -> dict:
    """Repository-size study: SG-LoRA minus each compared method per size, with paired 95%
    intervals (table, JSON, figure)."""
    from ..analyses.studies import write_study

    rows = write_study([read_json(f) for f in sizes], list(against), markdown, out, figures, title=title,
                       n_boot=bootstrap)
    return {"rows": len(rows)}
