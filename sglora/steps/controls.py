"""Steps of workflow/rules/controls.smk: the description controls of a group and their table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from .registry import (DEFAULT, SPLIT, Backbone, Bootstrap, Cache, CVAEs, Dataset, Device, Embeddings, Gallery,
                       Manifest, Repository, Tasks, Threads, step)

if TYPE_CHECKING:
    from ..experts.lora import LoraSpec
    from ..generator.settings import PriorSpec, SamplingSpec


@step("controls", device="device")
def controls(backbone: Backbone, manifest: Manifest, tasks: Tasks, group: A[str, "evaluation group"],
             methods: A[list[str], "methods run under the controls (sglora, topk_weighted)", SPLIT],
             repository: Repository, embeddings: Embeddings, out: A[Path, "output folder (descriptions.json, "
                                                                           "candidates/, metrics/)"],
             dataset: Dataset = None, cvae: CVAEs = (),
             selection: A[list[Path], "the methods' selection files (their chosen settings)"] = (),
             world: A[dict | None, "JSON datasets.<name>.options of an embedded dataset (its size: families, "
                                   "members); absent: the words of the embedding table's task names"] = None,
             spec: A[dict | None, "JSON config groups.<group> (its families: sglora.analyses.tables.group_families)"] = None,
             embedded: A[list[str], "embedded datasets (their tasks' families: the family word)"] = (),
             template: A[str, "description template, e.g. 'a photo of a <class name>' (empty: the manifests' default, "
                              "sglora.data.manifest.DEFAULT_TEMPLATE)"] = "",
             prior: PriorSpec = DEFAULT, sampling: SamplingSpec = DEFAULT, lora: LoraSpec = DEFAULT,
             seed: A[int, "seed of the random-words control"] = 0, image_cache: Cache = None, gallery: Gallery = 0,
             threads: Threads = None, device: Device = "auto") -> dict:
    """Description controls of a group: SG-LoRA and Top-K LoRA Weighted (validation-chosen
    settings) conditioned on another family's description, random world words, the bare
    template and a paraphrase; candidates and metrics of each under --out."""
    from ..analyses.description_controls import chosen_of, run_controls, world_class_names
    from ..analyses.tables import group_families
    from ..backbone.embed import read_embeddings
    from ..data.manifest import DEFAULT_TEMPLATE

    emb = read_embeddings(embeddings, dataset)
    return run_controls(backbone, manifest, list(tasks), group, list(methods), emb,
                        group_families(spec or {"tasks": list(tasks), "dataset": dataset}, embedded, group),
                        world_class_names(world, emb), template or DEFAULT_TEMPLATE, chosen_of(selection, methods),
                        repository, list(cvae), prior, sampling, lora, out, seed=seed, threads=threads, device=device,
                        cache=image_cache, gallery=gallery)


@step("controls-table")
def controls_table(own: A[dict[str, Path], "(a): each method's metrics folder of the group", {"metavar": "METHOD=DIR"}],
                   controls: A[Path, "the group's controls folder ('sglora controls')"], group: A[str, "evaluation group"],
                   tasks: Tasks, markdown: A[Path, "the table (Markdown)"], csv: A[Path, "the table (CSV)"],
                   spec: A[dict | None, "JSON config groups.<group> (its families: sglora.analyses.tables.group_families)"] = None,
                   embedded: A[list[str], "embedded datasets (their tasks' families: the family word)"] = (),
                   bootstrap_unit: A[str, "what a bootstrap replicate draws first: family or task",
                                     {"choices": ["family", "task"]}] = "family",
                   title: A[str, "the table's title"] = "", bootstrap: Bootstrap = 2000) -> dict:
    """The controls table of a group: each control's score and its paired interval minus (a)."""
    from ..analyses.description_controls import write_controls_table
    from ..analyses.tables import group_families

    spec = spec or {"tasks": list(tasks)}
    families = group_families(spec, embedded, group) if bootstrap_unit == "family" else None
    rows = write_controls_table(own, controls, group, list(tasks), families, title or spec.get("title", group),
                                markdown, csv, n_boot=bootstrap)
    return {"group": group, "rows": len(rows)}
