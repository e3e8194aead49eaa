"""Steps of workflow/rules/report.smk: tables, figures and the results page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated as A

from .registry import SPLIT, Groups, Metrics, Out, Threads, step


@step("tables", show=lambda res: None)
def tables(metrics: Metrics, groups: Groups, out: A[Path, "tables folder"],
           selection: A[Path | None, "selection.json: its 'chosen' settings are footnoted"] = None,
           bootstrap: A[int, "bootstrap replicates of the 95% intervals"] = 2000,
           paper: A[dict | None, "JSON: the sglora_paper row's fixed settings (footnoted)"] = None,
           bootstrap_unit: A[str, "what a bootstrap replicate draws first: family (families, then their tasks) or task",
                             {"choices": ["family", "task"]}] = "family",
           embedded: A[list[str], "embedded datasets (their tasks' families: the family word)"] = (),
           group_selections: A[dict[str, Path], "the selection.json of each group with its own validation tasks "
                                                "(footnoted under its tables instead of --selection)",
                               {"metavar": "GROUP=FILE"}] = None,
           target_half_width: A[float | None, "the half-width the paired 95% interval of SG-LoRA minus the nearest "
                                              "expert should reach (R@1 points): noted under the paired tables"] = None,
           pool: A[dict[str, Path], "the metric folders of training replicates 1, 2, ... (--metrics: replicate 0): "
                                    "the group and paired tables, pooled over all of them",
                   {"metavar": "K/GROUP/METHOD=DIR"}] = None) -> None:
    """Write the metric tables (CSV, Markdown, LaTeX) from the metric folders."""
    from ..analyses.tables import read_selection, write_tables
    from ..io import SGLoraError

    replicates: dict[int, dict[str, Path]] = {}
    for key, path in (pool or {}).items():
        k, _, rest = key.partition("/")
        if not k.isdigit() or int(k) < 1 or rest.count("/") != 1:
            raise SGLoraError(f"--pool {key}={path}: expected K/GROUP/METHOD=DIR with K = 1, 2, ... (a training replicate)")
        replicates.setdefault(int(k), {})[rest] = path
    if replicates and sorted(replicates) != list(range(1, len(replicates) + 1)):
        raise SGLoraError(f"--pool: training replicates {sorted(replicates)}; expected 1 .. {len(replicates)}")

    write_tables(metrics, out, groups, selection=read_selection(selection) if selection else None, n_boot=bootstrap,
                 paper=paper, embedded=embedded or (), unit=bootstrap_unit,
                 group_selections={g: read_selection(f) for g, f in (group_selections or {}).items()},
                 target=target_half_width, pool=[replicates[k] for k in sorted(replicates)])


@step("results-page", show=lambda res: None)
def results_page(out: Out, title: A[str, "the page's title"], tables: A[Path, "tables folder"],
                 groups: A[list[str], "groups, in order (comma-separated)", SPLIT],
                 paired: A[list[str], "groups that have a paired table (comma-separated)", SPLIT] = (),
                 premises: A[Path | None, "premises.md"] = None,
                 benchmarks: A[Path | None, "the run's Snakemake benchmark folder"] = None,
                 logs: A[Path | None, "the run's log folder (a warm job's log says what its child used)"] = None,
                 threads: Threads = None, source: A[str, "what the page is the results of (a config file)"] = "",
                 controls: A[list[str], "groups that have a description controls table (comma-separated)", SPLIT] = (),
                 captions: A[Path | None, "the caption quality table (captioning/quality.md)"] = None,
                 pooled: A[Path | None, "the tables pooled over training replicates (tables/pooled)"] = None,
                 replicates: A[int, "training replicates of the run (config replicates)"] = 1,
                 replicate_benchmarks: A[list[Path], "benchmark folders of training replicates 1, 2, ... (their "
                                                     "logs folder beside each)"] = ()) -> None:
    """Write a run's results page (premises, caption quality, tables, paired and controls
    tables, the tables pooled over training replicates, time per rule, provenance)."""
    from ..analyses.results_page import write_results_page

    write_results_page(out, title, tables, list(groups), list(paired), premises, benchmarks, threads or 1, source,
                       controls=list(controls), captions=captions, logs=logs, pooled=pooled, replicates=replicates,
                       replicate_benchmarks=list(replicate_benchmarks or ()))


@step("figures", show=lambda res: None)
def figures(repository: A[Path, "expert repository folder"], metrics: Metrics,
            candidates: A[dict[str, Path], "candidates files", {"metavar": "GROUP/METHOD=FILE"}],
            loras: A[dict[str, Path], "the unseen groups' Oracle LoRA folders", {"metavar": "DATASET/TASK=DIR"}],
            groups: Groups, out: A[Path, "figures folder"],
            samples_group: A[str, "group whose first task the samples t-SNE shows (Figure 10)"] = "") -> None:
    """Draw the figures (t-SNE of expert LoRAs, of samples, R@1 bars)."""
    from ..analyses.figures import write_figures

    write_figures(out, repository=repository, metrics=metrics, candidates=candidates, loras=loras or {},
                  groups=groups, samples_group=samples_group or None)
