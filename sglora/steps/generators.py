"""Steps of workflow/rules/generators.smk: what the generator adds (generator baselines, LoRA
spaces, novelty, the trainer's settings, runs in two spaces)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from ..io import SGLoraError, read_json, write_json
from ..methods import METHODS
from .registry import (DEFAULT, SPLIT, Backbone, Bootstrap, Cache, Dataset, Device, Embeddings, Gallery, Manifest,
                       Repository, Tasks, Threads, step)

if TYPE_CHECKING:
    from ..baselines.generator_baselines import NoisySpec
    from ..experts.lora import LoraSpec
    from ..experts.training import TrainSpec
    from ..generator.settings import PriorSpec, SamplingSpec


@step("generator-candidates")
def generator_candidates(method: A[str, "the generator baseline", {"choices": [m for m, v in METHODS.items()
                                                                              if v.candidates == "generator-candidates"]}],
                         tasks: Tasks, repository: Repository, embeddings: Embeddings,
                         out: A[Path, "candidates file (.safetensors)"], dataset: Dataset = None,
                         prior: PriorSpec = DEFAULT, sampling: SamplingSpec = DEFAULT, noisy_expert: NoisySpec = DEFAULT,
                         selection: A[Path | None, "SG-LoRA's selection file (its chosen k, tau)"] = None,
                         sglora: A[Path | None, "SG-LoRA's candidates of the same tasks (noisy_expert's spread)"] = None,
                         seen: A[bool, "seen tasks: leave the task's own expert out"] = False) -> dict:
    """Generator baselines: N draws from the semantic prior N(mu*, sigma*^2) (prior_sampling),
    or the description-nearest expert plus Gaussian noise of SG-LoRA's spread (noisy_expert);
    as many samples and runs as SG-LoRA. Writes a candidates file for 'sglora evaluate'."""
    from ..backbone.embed import read_embeddings
    from ..baselines.generator_baselines import generator_candidates as run
    from ..baselines.generator_baselines import sglora_samples
    from ..evaluation.method_selection import apply_settings, chosen_settings
    from ..experts.repository import Repository as Repo
    from ..generator.candidates import save_candidates

    repo = Repo(repository)
    chosen = chosen_settings(selection, "sglora")  # SG-LoRA's prior, chosen on the validation tasks
    prior, sampling = apply_settings(chosen, prior, sampling)
    sg, sg_info = sglora_samples(sglora, repo.layout) if sglora else (None, None)
    vecs, info = run(method, list(tasks), repo.experts(), read_embeddings(embeddings, dataset), prior, sampling, sg,
                     sg_info, noisy_expert, seen=seen)
    for t in info:
        info[t]["settings"] = {k: chosen[k] for k in ("k", "tau") if k in chosen}
    save_candidates(out, vecs, repo.layout, method, info, scaling=repo.lora.scaling)
    return {"method": method, "tasks": len(vecs), "samples": len(next(iter(vecs.values())))}


@step("spaces-select", device="device")
def spaces_select(backbone: Backbone, manifest: Manifest, tasks: Tasks, repository: Repository,
                  embeddings: Embeddings, spaces: A[dict, 'JSON config section spaces: {"compare": [spaces], '
                                                         '"methods": [merging methods]}'],
                  out: A[Path, "spaces selection JSON"], dataset: Dataset = None,
                  grid: A[dict, "JSON selection grids (the merging methods' k, tau axes)"] = None,
                  prior: PriorSpec = DEFAULT, image_cache: Cache = None, gallery: Gallery = 0, threads: Threads = None,
                  device: Device = "auto") -> dict:
    """LoRA spaces: choose each merging method's settings within each space (factors,
    product, product_svd) on the validation tasks."""
    from ..backbone.embed import read_embeddings
    from ..experts.repository import Repository as Repo
    from ..analyses.space_comparison import select_spaces

    repo = Repo(repository)
    res = select_spaces(backbone, manifest, list(tasks), spaces.get("methods", []), spaces.get("compare", []),
                        grid or {}, repo.experts(), repo.layout, read_embeddings(embeddings, dataset),
                        prior, repo.lora.scaling, threads=threads, device=device, cache=image_cache,
                        gallery=gallery)
    res["dataset"] = dataset
    write_json(out, res)
    return res["chosen"]


@step("spaces-evaluate", device="device")
def spaces_evaluate(backbone: Backbone, manifest: Manifest, tasks: Tasks, repository: Repository,
                    embeddings: Embeddings, selection: A[Path, "spaces selection JSON (spaces-select)"],
                    out: A[Path, "output folder (candidates/, metrics/)"],
                    markdown: A[Path, "the table of spaces (Markdown)"], csv: A[Path, "the table of spaces (CSV)"],
                    dataset: Dataset = None, prior: PriorSpec = DEFAULT, group: A[str, "evaluation group"] = "",
                    title: A[str, "the table's title"] = "", seen: A[bool, "seen tasks"] = False,
                    bootstrap: Bootstrap = 2000, image_cache: Cache = None, gallery: Gallery = 0,
                    threads: Threads = None, device: Device = "auto") -> dict:
    """LoRA spaces: every (merging method, space) with its validation-chosen settings on a
    group's test tasks; writes candidates/ and metrics/ into --out and the table of spaces."""
    from ..backbone.embed import read_embeddings
    from ..io import atomic_path
    from ..experts.repository import Repository as Repo
    from ..analyses.space_comparison import evaluate_spaces, write_space_table

    repo, sel = Repo(repository), read_json(selection)
    with atomic_path(out, directory=True) as tmp:
        evaluate_spaces(backbone, manifest, list(tasks), sel, repo.experts(), repo.layout,
                        read_embeddings(embeddings, dataset), prior, repo.lora.scaling, tmp,
                        group=group, seen=seen, threads=threads, device=device, cache=image_cache, gallery=gallery)
    write_space_table(Path(out) / "metrics", sel, list(tasks), title or group, markdown, csv, n_boot=bootstrap)
    return {"group": group, "table": str(markdown)}


@step("novelty", device="device")
def novelty(backbone: Backbone, manifest: Manifest, tasks: Tasks, repository: Repository, embeddings: Embeddings,
            cvae: A[Path, "trained CVAE folder (its normalisation defines the normalised space)"],
            candidates: A[dict[str, Path], "generated LoRAs per method", {"metavar": "METHOD=FILE"}],
            metrics: A[dict[str, Path], "the methods' metrics folders", {"metavar": "METHOD=DIR"}],
            out: A[Path, "novelty JSON"], markdown: A[Path, "novelty table (Markdown)"],
            figure: A[Path, "figure (.png; a .pdf beside it)"], dataset: Dataset = None, prior: PriorSpec = DEFAULT,
            group: A[str, "evaluation group"] = "", title: A[str, "the table's title"] = "",
            seen: A[bool, "seen tasks"] = False, bootstrap: Bootstrap = 2000, image_cache: Cache = None,
            gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """Novelty of a group's generated LoRAs: distance to the nearest training snapshot
    (CVAE-normalised and ΔW space) against the repository's within- and between-expert
    distances, and agreement of retrieval ranks with the nearest snapshot's (evaluated here
    on the same test queries)."""
    from ..analyses.novelty import novelty_of_group, write_novelty
    from ..backbone.embed import read_embeddings

    res = novelty_of_group(backbone, manifest, list(tasks), repository, cvae, {m: str(p) for m, p in candidates.items()},
                           {m: str(p) for m, p in metrics.items()}, read_embeddings(embeddings, dataset),
                           modality=prior.modality, seen=seen, threads=threads, device=device,
                           cache=image_cache, gallery=gallery, n_boot=bootstrap)
    write_novelty(res, out, markdown, figure, title or group, {m: v.label for m, v in METHODS.items()})
    return {"group": group, "methods": sorted(candidates)}


@step("select-training", device="device")
def select_training(backbone: Backbone, manifest: Manifest, tasks: A[list[str], "validation task ids", SPLIT],
                    grid: A[dict, 'JSON grid of trainer settings, e.g. {"lr": [0.003, 0.01, 0.03]}'],
                    out: A[Path, "selection JSON"], lora: LoraSpec = DEFAULT, training: TrainSpec = DEFAULT,
                    image_cache: Cache = None, gallery: Gallery = 0, threads: Threads = None,
                    device: Device = "auto") -> dict:
    """Choose the LoRA trainer's settings (e.g. the lr of the frozen_a space) on the validation
    tasks: one LoRA per grid point and task, trained on the task's own pairs, its final
    snapshot scored on its test split."""
    from ..evaluation.trainer_selection import select_training as run

    res = run(backbone, manifest, list(tasks), lora,
              training, grid, threads=threads,
              device=device, cache=image_cache, gallery=gallery)
    write_json(out, res)
    return res["chosen"]


@step("compare-runs")
def compare_runs(runs: A[dict[str, Path], "each run's metrics folder of each method", {"metavar": "SPACE/METHOD=DIR"}],
                 group: A[str, "evaluation group"], methods: A[list[str], "methods", SPLIT], tasks: Tasks,
                 out: A[Path, "table (Markdown)"],
                 selections: A[dict[str, Path], "each run's selection.json", {"metavar": "SPACE=FILE"}] = None,
                 reference: A[str, "the run the others are compared with"] = "factors",
                 title: A[str, "the table's title"] = "", bootstrap: Bootstrap = 2000) -> dict:
    """Two runs of one world in different LoRA spaces (e.g. the default factors run and a
    frozen_a run): every method of a group in each, with paired differences to the
    reference run."""
    from ..analyses.space_comparison import write_runs_table

    folders: dict[str, dict[str, str]] = {}
    for key, folder in runs.items():
        space, sep, method = key.partition("/")
        if not (sep and space and method):
            raise SGLoraError(f"--runs: {key!r} is not SPACE/METHOD")
        folders.setdefault(space, {})[method] = str(folder)
    write_runs_table(out, folders, group, list(methods), list(tasks), title or group, selections or {}, reference,
                     bootstrap)
    return {"group": group, "runs": sorted(runs)}
