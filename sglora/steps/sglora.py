"""Steps of workflow/rules/sglora.smk: SG-LoRA's CVAE, candidates of every method, settings chosen on
validation tasks, the ablation table, the premises, and ``sglora generate``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from ..io import SGLoraError, read_json, write_json
from ..methods import METHODS
from .registry import DEFAULT, POSITIONAL, SPLIT, Backbone, CVAEs, Cache, Dataset, Device, Gallery, Tasks, Threads, step

if TYPE_CHECKING:
    from ..analyses.premises import PremiseSpec
    from ..experts.lora import LoraSpec
    from ..generator.settings import CVAESpec, PriorSpec, SamplingSpec


@step("train-cvae", device="cvae")
def train_cvae(repository: A[Path, "expert repository folder"], out: A[Path, "CVAE folder"], cvae: CVAESpec,
               prior: PriorSpec, threads: Threads = None) -> dict:
    """Train the conditional VAE on all snapshots of the repository."""
    from ..generator.cvae import fit_cvae

    return fit_cvae(repository, out, cvae, prior, threads=threads)


@step("candidates")
def candidates(method: A[str, "the method", {"choices": [m for m, v in METHODS.items() if v.candidates == "candidates"]}],
               out: A[Path, "candidates file (.safetensors)"], tasks: Tasks = (), dataset: Dataset = None,
               repository: A[Path | None, "expert repository folder"] = None,
               embeddings: A[Path | None, "task embedding table"] = None,
               cvae: A[list[Path], "trained CVAE folders (sglora): the runs of every variant; those matching the "
                                   "chosen settings are used"] = (),
               prior: PriorSpec = DEFAULT, sampling: SamplingSpec = DEFAULT,
               selection: A[Path | None, "selection.json: the settings chosen on the validation tasks"] = None,
               seen: A[bool, "the tasks are experts (seen tasks): build their condition as in the CVAE's training, "
                             "and leave a task out of its own merge"] = False,
               adapters: A[Path | None, "also write each sample as a PEFT adapter folder here (sglora)"] = None,
               loras: A[list[Path], "trained LoRA folders (oracle: folder name = task id; multitask: its one "
                                    "folder)"] = (),
               settings: A[dict | None, "JSON: fixed settings in place of the chosen ones (sglora_paper: the "
                                        "paper-faithful grid point)"] = None) -> dict:
    """Write a method's candidate LoRA(s) for each task of a group (sglora samples, the
    paper-faithful sglora_paper samples, oracle, multitask, model_soups, adaptersoup, topk_weighted,
    nearest_expert, expert_mean)."""
    from ..generator.candidates import save_candidates
    from ..backbone.embed import read_embeddings
    from ..experts.repository import Repository
    from ..evaluation.method_selection import TrainedCVAEs, chosen_settings, method_candidates

    if method in ("oracle", "multitask"):
        from ..baselines.multitask import multitask_candidates
        from ..generator.candidates import oracle_candidates

        vecs, layout, info, scaling = (oracle_candidates(loras) if method == "oracle"
                                       else multitask_candidates(loras, list(tasks)))
        save_candidates(out, vecs, layout, method, info, scaling=scaling)
        return {"method": method, "tasks": len(vecs)}
    repo = Repository(repository)
    if method == "expert_mean":
        from ..baselines.merging import expert_mean

        vecs, info = expert_mean(repo, list(tasks), seen)
        save_candidates(out, vecs, repo.layout, method, info, scaling=repo.lora.scaling)
        return {"method": method, "tasks": len(vecs)}
    experts = repo.experts()
    if method == "sglora_paper" and settings is None:
        raise SGLoraError("sglora_paper: --settings (the paper-faithful grid point) is required")
    settings = dict(settings) if settings is not None else chosen_settings(selection, method)
    generator = METHODS[method].samples_of or method
    emb = read_embeddings(embeddings, dataset)
    vecs, info = method_candidates(generator, settings, list(tasks), experts, emb, prior, sampling,
                                   cvaes=TrainedCVAEs(cvae) if generator == "sglora" else None, seen=seen)
    for t in info:
        info[t]["settings"] = settings
    if method == "sglora" and adapters:
        from ..generator.candidates import save_sample_adapters

        save_sample_adapters(adapters, vecs, info, repo, emb)
    save_candidates(out, vecs, repo.layout, method, info, bound=experts.norm_bound, scaling=repo.lora.scaling)
    return {"method": method, "tasks": len(vecs), "settings": settings}


@step("select", device="device")
def select(backbone: Backbone, manifest: A[Path, "task manifest of the validation tasks' dataset"],
           tasks: A[list[str], "validation task ids (comma-separated)", SPLIT],
           grid: A[dict, 'JSON {"method": {"setting": [values, ...]}}'],
           repository: A[Path, "expert repository folder"], embeddings: A[Path, "task embedding table"],
           out: A[Path, "the method's selection file (JSON)"], dataset: Dataset = None, cvae: CVAEs = (),
           prior: PriorSpec = DEFAULT, sampling: SamplingSpec = DEFAULT, lora: LoraSpec = DEFAULT,
           image_cache: Cache = None, gallery: Gallery = 0, device: Device = "auto", threads: Threads = None) -> dict:
    """Choose every method's settings on the validation tasks (writes selection.json)."""
    from ..backbone.embed import read_embeddings
    from ..experts.repository import Repository
    from ..evaluation.method_selection import TrainedCVAEs, select_settings

    repo = Repository(repository)
    res = select_settings(backbone, manifest, list(tasks), grid, repo.experts(), read_embeddings(embeddings, dataset),
                          prior, sampling,
                          lora.scaling, repo.layout,
                          cvaes=TrainedCVAEs(cvae) if cvae else None, threads=threads, device=device,
                          cache=image_cache, gallery=gallery)
    res["dataset"] = dataset
    write_json(out, res)
    return res["chosen"]


@step("selection-summary")
def selection_summary(selections: A[list[Path], "per-method selection files"],
                      out: A[Path, "selection.json"]) -> dict:
    """Merge the per-method selection files into selection.json."""
    from ..evaluation.method_selection import merge_selections

    res = merge_selections([read_json(f) for f in selections])
    write_json(out, res)
    return res["chosen"]


@step("export-cvae")
def export_cvae(cvae: CVAEs, selection: A[Path, "selection.json"], out: A[Path, "CVAE folder"]) -> dict:
    """Copy the CVAE of SG-LoRA's chosen settings (run 0) for 'sglora generate'."""
    from ..evaluation.method_selection import export_chosen

    return export_chosen(cvae, read_json(selection), out)


@step("ablation")
def ablation(selection: A[Path, "SG-LoRA's selection file (selection/sglora.json)"],
             paper: A[dict, 'JSON the paper-faithful settings, e.g. {"k": 4, "tau": 0.05, "temperature": 1.0}'],
             markdown: A[Path, "the ablation table (Markdown)"], csv: A[Path, "the ablation table (CSV)"],
             title: A[str, "the table's title"] = "SG-LoRA generator variants (validation tasks)",
             bootstrap: A[int, "bootstrap replicates of the 95% intervals"] = 2000) -> dict:
    """The ablation table of SG-LoRA's grid: every point's validation score, the chosen and
    the paper-faithful points marked (like supplementary Tables 11-12)."""
    from ..analyses.ablation import write_ablation

    return write_ablation(read_json(selection), paper, markdown, csv, title, n_boot=bootstrap)


def _show_premises(res: dict) -> str:
    from ..analyses.premises import render_premises

    return render_premises(res)


@step("premises", device="device", show=_show_premises)
def premises(backbone: Backbone, manifest: A[Path, "task manifest of the experts' dataset"],
             experts_dataset: A[str, "the experts' dataset name"], repository: A[Path, "expert repository folder"],
             embeddings: A[Path, "task embedding table"],
             tasks: A[list[str], "the validation tasks (comma-separated): the premises read no test task", SPLIT],
             out: A[Path, "premises.json"], markdown: A[Path, "premises.md"], premises: PremiseSpec,
             embedded: A[list[str], "embedded datasets (their classes have families)"] = (),
             transfer: A[list[str], "the validation tasks of the experts' dataset"] = (),
             headroom: A[dict[str, str], "metric folders of Zero-Shot and the Oracle on the validation tasks",
                         {"metavar": "NAME=ZERO_SHOT_DIR,ORACLE_DIR"}] = None,
             prior: PriorSpec = DEFAULT, image_cache: Cache = None, gallery: Gallery = 0,
             device: Device = "auto") -> dict:
    """Check the benchmark's premises on the validation tasks (description-nearest expert in
    family, Oracle headroom, family transfer); on embedded worlds a failed premise is an error."""
    from ..analyses.premises import run_premises

    metrics = {name: tuple(dirs.split(",")) for name, dirs in (headroom or {}).items()}
    return run_premises(backbone, manifest, repository, embeddings, experts_dataset,
                        {"validation": list(tasks), "transfer": list(transfer)}, set(embedded), metrics, premises,
                        out, markdown, modality=prior.modality, device=device, cache=image_cache, gallery=gallery)


@step("premises-descriptions", show=_show_premises)
def premises_descriptions(embeddings: A[Path, "task embedding table"],
                          experts_dataset: A[str, "the experts' dataset name"],
                          experts: A[list[str], "the expert tasks (comma-separated)", SPLIT],
                          tasks: A[list[str], "the validation tasks (comma-separated): the premises read no test task", SPLIT],
                          out: A[Path, "descriptions.json"], premises: PremiseSpec,
                          embedded: A[list[str], "embedded datasets (their classes have families)"] = (),
                          prior: PriorSpec = DEFAULT) -> dict:
    """Check the premise that needs only the task descriptions (description-nearest expert in
    the task's family) before any LoRA is trained; on embedded worlds a failure is an error."""
    from ..analyses.premises import run_description_premises

    return run_description_premises(embeddings, experts_dataset, list(experts), list(tasks), set(embedded), premises,
                                    out, modality=prior.modality)


def _show_generated(res: dict | list[dict]) -> str:
    lines = []
    for one in res if isinstance(res, list) else [res]:
        lines += [f"description: {one['description']}", "experts used (top-K, alpha):"]
        lines += [f"  {e['name']:<30} sim={e['similarity']:.3f}  alpha={e['alpha']:.3f}" for e in one["experts"]]
        lines += [f"wrote {d}" for d in one["adapters"]]
    return "\n".join(lines)


@step("generate", show=_show_generated)
def generate(out: A[Path, "adapter folder (or parent of sample_NNN folders); with --descriptions, the parent of "
                          "one folder per description, named by its slug (a_photo_of_a_zebra)"],
             description: A[str | None, 'the task, e.g. "a photo of a zebra"', POSITIONAL | {"nargs": "?"}] = None,
             descriptions: A[Path | None, "UTF-8 file of descriptions, one a line (blank lines and # comments "
                                          "skipped), all generated in this process with the same --seed",
                                          {"metavar": "FILE"}] = None,
             results: A[Path | None, "a finished run's results folder: uses its repository/ and cvae/selected/",
                                     {"metavar": "DIR"}] = None,
             repository: A[Path | None, "expert repository folder (with --cvae, instead of --results)",
                                        {"metavar": "DIR"}] = None,
             cvae: A[Path | None, "exported CVAE folder (with --repository, instead of --results)",
                                  {"metavar": "DIR"}] = None,
             overwrite: A[bool, "write into an existing non-empty --out: the files of an earlier generate there "
                                "(its generate.json) are replaced or removed, nothing else"] = False,
             samples: A[int, "adapters to write per description"] = 1,
             seed: A[int, "sampling seed, 0 to 2^64 - 1"] = 0,
             backbone: A[str | None, "defaults to the repository's backbone"] = None) -> dict | list[dict]:
    """Generate LoRA adapter(s), each with a model card (README.md), for a text description
    or a file of them, with a run's SG-LoRA (--results) or a given repository and CVAE."""
    from ..generator.sampling import generate as one, generate_many, model_paths, read_descriptions

    if (description is None) == (descriptions is None):
        raise SGLoraError('give a description ("a photo of a zebra") or --descriptions FILE'
                          + (", not both" if description is not None else ""))
    repository, cvae = model_paths(results, repository, cvae)
    if description is not None:
        return one(description, repository, cvae, out, samples=samples, seed=seed, backbone=backbone,
                   overwrite=overwrite)
    return generate_many(read_descriptions(descriptions), repository, cvae, out, samples=samples, seed=seed,
                         backbone=backbone, overwrite=overwrite)
