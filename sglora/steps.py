"""Every pipeline step as one typed function: explicit input files and settings objects
in, explicit output files out, a JSON-able summary returned.

The Snakemake rules reach these through ``sglora <step>`` (``sglora/cli.py`` builds each
subcommand from the function's signature: a parameter ``image_cache`` is the flag
``--image-cache``, a settings object ``lora: LoraSpec`` is ``--lora JSON``, the config
section of the same name); benchmarks and notebooks call them directly. A step knows
nothing of the results folder's layout: every path it reads or writes is a parameter.

Layers (tests/test_imports.py): ``cli`` -> ``steps`` -> domain modules -> ``io``/``methods``.
"""

from __future__ import annotations

import importlib
import typing
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from typing import Annotated as A

from .io import SGLoraError, read_json, write_json
from .methods import METHODS

if TYPE_CHECKING:
    from .baselines.mole.config import MoLESpec
    from .baselines.multitask import MultitaskSpec
    from .baselines.pdiff.config import PDiffSpec
    from .generator.cvae import CVAESpec
    from .experts.training import TrainSpec
    from .generator.sampling import SamplingSpec
    from .baselines.controls import NoisySpec
    from .experts.lora import LoraSpec
    from .analyses.premises import PremiseSpec
    from .backbone.pretrain import PretrainSpec
    from .generator.prior import PriorSpec

#: where each settings class of a step's signature lives. They are imported only when a
#: step that takes one runs (``hints``): most live beside torch code, and a light step
#: (check-tasks, tables, ...) should not pay torch's import on every Snakemake job.
SETTINGS_HOME = {
    "MoLESpec": "sglora.baselines.mole.config", "MultitaskSpec": "sglora.baselines.multitask", "PDiffSpec": "sglora.baselines.pdiff.config",
    "CVAESpec": "sglora.generator.cvae", "TrainSpec": "sglora.experts.training", "SamplingSpec": "sglora.generator.sampling",
    "NoisySpec": "sglora.baselines.controls", "LoraSpec": "sglora.experts.lora", "PremiseSpec": "sglora.analyses.premises",
    "PretrainSpec": "sglora.backbone.pretrain", "PriorSpec": "sglora.generator.prior",
}


class _Settings(dict):
    """Annotation namespace that imports a settings class on first use."""

    def __missing__(self, name: str):
        if name not in SETTINGS_HOME:
            raise KeyError(name)
        return getattr(importlib.import_module(SETTINGS_HOME[name]), name)


def settings_class(name: str) -> type:
    """A settings class by name (``settings_class("PriorSpec")``), imported on demand."""
    return _Settings()[name]


def hints(fn: Callable) -> dict:
    """A step's parameter types (``Annotated`` kept), importing only the settings it takes."""
    return typing.get_type_hints(fn, localns=_Settings(), include_extras=True)


#: step name (``sglora <name>``) -> function, in ``sglora --help`` order
STEPS: dict[str, Callable] = {}
#: marks a parameter as positional on the command line
POSITIONAL = {"positional": True}


def step(name: str, device: str | Callable | None = None, show: Callable | None = None):
    """Register a step. ``device``: the parameter that says where it runs (a device string
    or a settings object with a ``device`` field), or a function of the arguments;
    ``show``: how the CLI prints its result (default: one JSON line)."""

    def register(fn):
        fn.step_name, fn.device_of, fn.show = name, device, show
        STEPS[name] = fn
        return fn

    return register


def device_of(fn: Callable, kwargs: dict) -> str | None:
    """The device setting a step will run on, read from its arguments; ``None``: no device."""
    if fn.device_of is None:
        return None
    if callable(fn.device_of):
        return fn.device_of(kwargs)
    value = kwargs[fn.device_of]
    return value if isinstance(value, str) else value.device


Backbone = A[str, "model id or local folder"]
Manifest = A[Path, "task manifest (Parquet)"]
Manifests = A[dict[str, Path], "task manifests", {"metavar": "DATASET=FILE"}]
SPLIT = {"split": ","}  #: a list that also takes comma-separated values
Tasks = A[list[str], "task ids (comma-separated)", SPLIT]
Out = A[Path, "output"]
Threads = A[int | None, "torch threads and DataLoader workers"]
Device = A[str, 'torch device: "auto" = cuda when available, else cpu']
Cache = A[Path | None, "the dataset's image cache (sglora image-cache)"]
Gallery = A[int, "retrieval within galleries of this many test images (0 = whole task)"]
Dataset = A[str | None, "dataset of the tasks (to pick their embeddings)"]
CVAEs = A[list[Path], "trained CVAE folders (every variant and run)"]


# --- data ------------------------------------------------------------------------------

@step("world")
def world(out: A[Path, "output folder"], seed: A[int, "world seed (family looks and images)"] = 0,
          options: A[dict, "JSON datasets.<name>.options: domain, classes, images_per_class, test_per_class, "
                           "image_size, template, families, members"] = None) -> dict:
    """Generate one domain of the embedded benchmark's synthetic world (images, manifest, captions)."""
    import inspect

    from .data.world import generate_world

    known = set(inspect.signature(generate_world).parameters) - {"out_dir", "seed", "progress"}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise SGLoraError(f"datasets.<name>.options of an embedded world: {unknown} are not options; "
                          f"expected some of {sorted(known)}")
    return generate_world(out, seed=seed, **(options or {}))


@step("manifest")
def manifest(dataset: A[str, "dataset kind: coco, pets, flowers, flickr30k, cifar100"],
             root: A[Path, "folder the dataset was unpacked into"], out: A[Path, "manifest Parquet file to write"],
             options: A[dict, "JSON datasets.<name>.options: the adapter's options (docs/datasets.md)"] = None,
             option: A[list[str], "one adapter option KEY=VALUE (JSON value, else a string); wins over --options",
                       {"metavar": "KEY=VALUE"}] = (),
             image_dir: A[Path | None, "where adapters that write images (cifar100) put them; the option image_dir "
                                       "wins; others ignore it"] = None) -> dict:
    """Build a task manifest (Parquet, one row per image) from a dataset in the layout its
    authors distribute (docs/datasets.md), e.g. ``sglora manifest --dataset pets --root
    data/oxford-iiit-pet --out pets.parquet --option max_images=50``."""
    from .data.datasets import adapter_options, bad_images, build_manifest
    from .data.manifest import write_manifest

    options = dict(options or {})
    options.update(parse_option(o) for o in option)
    if image_dir and "image_dir" in adapter_options(dataset):
        options.setdefault("image_dir", str(image_dir))
    table = build_manifest(dataset, str(root), **options)
    write_manifest(out, table)
    return {"manifest": str(out), "rows": table.num_rows, "tasks": len(set(table.column("task").to_pylist())),
            "bad_images": bad_images(table)}


def parse_option(text: str) -> tuple[str, object]:
    """``"max_images=5"`` -> ``("max_images", 5)``; a value that is not JSON stays a string."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SGLoraError(f"--option {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _caption_device(kw: dict) -> str | None:
    from .data.captioning import parse_options

    if kw["backend"] != "qwen2vl":
        return None
    return parse_options(kw["backend"], kw["options"] or {}).device or "auto"


@step("caption", device=_caption_device)
def caption(manifest: A[Path, "input manifest Parquet"],
            out: A[Path, "output manifest Parquet (captions + provenance columns)"],
            backend: A[str, "where captions come from (none: keep the dataset's captions, add provenance columns)",
                       {"choices": ["qwen2vl", "synthetic", "none"]}],
            shard_dir: A[Path, "folder for resumable caption shards"],
            options: A[dict, "JSON datasets.<name>.captioner.options: model, demonstrations, captions_per_image, "
                             "temperature, ... (docs/datasets.md)"] = None) -> dict:
    """Fill the captions of a manifest. Backends: qwen2vl (in-context captioning,
    supplementary Figure 6: instruction, two demonstrations, target), synthetic (captions
    read from the Parquet file named by the option captions_file), none (keep the dataset's
    captions). Work is split into shards under --shard-dir that a rerun skips."""
    from .data.captioning import caption_manifest

    return caption_manifest(manifest, out, backend, shard_dir, **(options or {}))


@step("check-tasks")
def check_tasks(manifest: Manifests, wanted: A[dict, 'JSON {"config key": {"dataset": ["task", ...]}}'],
                out: A[Path, "JSON summary: images per task and split"]) -> dict:
    """Check that every configured expert and evaluation task exists in its dataset with
    captioned train and test images, before any training starts."""
    from .data.manifest import check_tasks as check

    counts = check({d: str(p) for d, p in manifest.items()}, wanted)
    # only the checked tasks: the file of one task's check does not change with the others
    checked: dict[str, set] = {}
    for by in wanted.values():
        for d, tasks in by.items():
            checked.setdefault(d, set()).update(tasks)
    write_json(out, {d: {t: n for t, n in per.items() if t in checked.get(d, ())} for d, per in counts.items()})
    return {d: len(t) for d, t in counts.items()}


@step("image-cache")
def image_cache(backbone: A[str, "model id or local folder (its image processor sets the size)"], manifest: Manifest,
                out: A[Path, "cache root; the cache goes to <out>/<processor key>/"],
                threads: A[int | None, "decoding worker processes"] = None) -> dict:
    """Decode, resize and crop every image of a manifest once, with the backbone's image
    processor, into a uint8 cache that training, evaluation and embedding stream from."""
    from .backbone.clip import load_clip
    from .data.images import build_cache
    from .data.manifest import read_manifest

    _, processor = load_clip(backbone)
    paths = read_manifest(manifest).column("image_path").to_pylist()
    return build_cache(paths, processor, out, workers=threads or 1)


# --- backbone, experts, repository -----------------------------------------------------

@step("pretrain")
def pretrain(worlds: A[list[Path], "world folders written by 'sglora world'"],
             out: A[Path, "output folder (save_pretrained layout)"], pretrain: PretrainSpec,
             seed: A[int, "initialisation and data order"] = 0, threads: Threads = None) -> dict:
    """Pretrain the embedded benchmark's small CLIP on coarse captions of all classes."""
    from .backbone.pretrain import pretrain_clip
    from .data.world import pretraining_pairs

    pairs = pretraining_pairs([str(w) for w in worlds])
    return pretrain_clip(out, pairs.images, pairs.texts, pairs.vocab, seed=seed, threads=threads,
                         describes=pairs.describes, **asdict(pretrain))


@step("embed", device="device")
def embed(backbone: Backbone, manifest: Manifests, out: A[Path, "task embedding table (Parquet)"],
          template: A[str, "description template, e.g. 'a photo of a <class name>'"] = "",
          image_cache: A[dict[str, Path], "image caches (sglora image-cache)", {"metavar": "DATASET=DIR"}] = None,
          device: Device = "auto", threads: A[int | None, "DataLoader workers"] = None) -> dict:
    """Embed every task's description (text) and training images (visual) with the frozen backbone."""
    from .backbone.embed import embed_tasks

    return embed_tasks(backbone, {d: str(p) for d, p in manifest.items()}, out, template=template or None,
                       device=device, caches={d: str(p) for d, p in (image_cache or {}).items()}, workers=threads or 0)


@step("train-lora", device="training")
def train_lora(backbone: Backbone, manifest: Manifest, task: A[str, "task id"],
               out: A[Path, "output folder: snapshots.safetensors, adapter/, training.json"],
               lora: LoraSpec, training: TrainSpec, image_cache: Cache = None, threads: Threads = None) -> dict:
    """Train one task's LoRA (an expert for a seen task, the Oracle for an unseen one)."""
    from .experts.training import train_lora as train

    info = train(backbone, manifest, task, out, lora, training, threads=threads, cache=image_cache)
    return {k: info[k] for k in ("task", "pairs", "dim", "snapshots")} | {"final_loss": info["losses"][-1]}


@step("assemble")
def assemble(loras: A[list[Path], "trained LoRA folders (folder name = task id)"],
             embeddings: A[Path, "task embedding table"], out: A[Path, "repository folder"],
             dataset: A[str | None, "dataset of the experts (to pick their embeddings)"] = None) -> dict:
    """Stream expert LoRAs into the Parquet expert repository."""
    from .backbone.embed import read_embeddings
    from .experts.repository import assemble as build

    experts = [{"task": Path(d).name, "lora_dir": str(d)} for d in loras]
    return build(out, experts, read_embeddings(embeddings, dataset))


# --- SG-LoRA ---------------------------------------------------------------------------

@step("train-cvae", device="cvae")
def train_cvae(repository: A[Path, "expert repository folder"], out: A[Path, "CVAE folder"], cvae: CVAESpec,
               prior: PriorSpec, threads: Threads = None) -> dict:
    """Train the conditional VAE on all snapshots of the repository."""
    import numpy as np

    from .generator.cvae import save_cvae
    from .generator.cvae import train_cvae as train
    from .generator.prior import augmented_conditions, training_conditions
    from .experts.repository import Repository

    repo = Repository(repository)
    experts = repo.experts()
    tasks, vecs = [], []
    for t, v in repo.iter_snapshots():
        tasks += t
        vecs.append(v)
    index = np.array([experts.tasks.index(t) for t in tasks])
    keys = experts.embedding(prior.modality)
    cm, cv = training_conditions(keys, experts.mu, experts.var, prior.k, prior.tau, cvae.condition)
    pools = (augmented_conditions(keys, experts.mu, experts.var, prior.k, prior.tau, cvae.augment, seed=cvae.seed)
             if cvae.augment else None)
    model, history = train(np.concatenate(vecs), index, cm, cv, cvae, threads=threads, pools=pools,
                           embeddings=keys if cvae.describe else None)
    save_cvae(out, model, {"prior": asdict(prior), "condition": cvae.condition, "history": history,
                           "repository": str(repository), "repository_checksum": experts.checksum})
    return history[-1]


def _chosen(path: Path | None, method: str) -> dict:
    """A method's settings chosen on the validation tasks (``{}`` without a selection file)."""
    return read_json(path).get("chosen", {}).get(method, {}) if path else {}


@step("candidates")
def candidates(method: A[str, "the method", {"choices": [m for m, v in METHODS.items() if v.candidates == "candidates"]}],
               out: A[Path, "candidates file (.safetensors)"], tasks: Tasks = (), dataset: Dataset = None,
               repository: A[Path | None, "expert repository folder"] = None,
               embeddings: A[Path | None, "task embedding table"] = None,
               cvae: A[list[Path], "trained CVAE folders (sglora): the runs of every variant; those matching the "
                                   "chosen settings are used"] = (),
               prior: PriorSpec = None, sampling: SamplingSpec = None,
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
    from .generator.candidates import save_candidates
    from .backbone.embed import read_embeddings
    from .experts.repository import Repository
    from .evaluation.method_selection import TrainedCVAEs, method_candidates

    if method == "oracle":
        from .experts.training import read_lora_spec, read_snapshots

        vecs, layout = {}, None
        scalings = {read_lora_spec(d).scaling for d in loras}
        if len(scalings) > 1:
            raise SGLoraError(f"oracle: the LoRA folders were trained with different scalings {sorted(scalings)}")
        for d in loras:
            snaps, layout = read_snapshots(d)
            vecs[Path(d).name] = snaps[-1:]
        save_candidates(out, vecs, layout, method, {t: {"kind": "trained on the task's own data"} for t in vecs},
                        scaling=scalings.pop() if scalings else None)
        return {"method": method, "tasks": len(vecs)}
    if method == "multitask":
        from .baselines.multitask import multitask_candidates

        if len(loras) != 1:
            raise SGLoraError(f"multitask: --loras takes the multi-task LoRA's one folder, got {len(loras)}")
        from .experts.training import read_lora_spec

        vecs, layout, info = multitask_candidates(loras[0], list(tasks))
        save_candidates(out, vecs, layout, method, info, scaling=read_lora_spec(loras[0]).scaling)
        return {"method": method, "tasks": len(vecs)}
    repo = Repository(repository)
    if method == "expert_mean":
        from .baselines.merging import expert_mean

        vecs, info = expert_mean(repo, list(tasks), seen)
        save_candidates(out, vecs, repo.layout, method, info, scaling=repo.lora.scaling)
        return {"method": method, "tasks": len(vecs)}
    experts = repo.experts()
    if method == "sglora_paper" and settings is None:
        raise SGLoraError("sglora_paper: --settings (the paper-faithful grid point) is required")
    settings = dict(settings) if settings is not None else _chosen(selection, method)
    generator = "sglora" if method in ("sglora", "sglora_paper") else method
    emb = read_embeddings(embeddings, dataset)
    vecs, info = method_candidates(generator, settings, list(tasks), experts, emb,
                                   prior or settings_class("PriorSpec")(), sampling or settings_class("SamplingSpec")(),
                                   cvaes=TrainedCVAEs(cvae) if generator == "sglora" else None,
                                   seen=seen)
    for t in info:
        info[t]["settings"] = settings
    if method == "sglora" and adapters:
        from .experts.lora import save_adapter

        for t, v in vecs.items():
            for i, vec in enumerate(v):
                save_adapter(Path(adapters) / t / f"sample_{i:03d}", vec, repo.layout, repo.lora, repo.backbone,
                             {"task": t, "description": emb[t]["description"], "seed": info[t]["seeds"][info[t]["runs"][i]],
                              "run": info[t]["runs"][i], "sample": i, "experts": info[t]["experts"], "kind": "sglora"})
        Path(adapters).mkdir(parents=True, exist_ok=True)
    save_candidates(out, vecs, repo.layout, method, info, bound=experts.norm_bound, scaling=repo.lora.scaling)
    return {"method": method, "tasks": len(vecs), "settings": settings}


@step("select", device="device")
def select(backbone: Backbone, manifest: A[Path, "task manifest of the validation tasks' dataset"],
           tasks: A[list[str], "validation task ids (comma-separated)", SPLIT],
           grid: A[dict, 'JSON {"method": {"setting": [values, ...]}}'],
           repository: A[Path, "expert repository folder"], embeddings: A[Path, "task embedding table"],
           out: A[Path, "the method's selection file (JSON)"], dataset: Dataset = None, cvae: CVAEs = (),
           prior: PriorSpec = None, sampling: SamplingSpec = None, lora: LoraSpec = None,
           image_cache: Cache = None, gallery: Gallery = 0, device: Device = "auto", threads: Threads = None) -> dict:
    """Choose every method's settings on the validation tasks (writes selection.json)."""
    from .backbone.embed import read_embeddings
    from .experts.repository import Repository
    from .evaluation.method_selection import TrainedCVAEs, select_settings

    repo = Repository(repository)
    res = select_settings(backbone, manifest, list(tasks), grid, repo.experts(), read_embeddings(embeddings, dataset),
                          prior or settings_class("PriorSpec")(), sampling or settings_class("SamplingSpec")(),
                          (lora or settings_class("LoraSpec")()).scaling, repo.layout,
                          cvaes=TrainedCVAEs(cvae) if cvae else None, threads=threads, device=device,
                          cache=image_cache, gallery=gallery)
    res["dataset"] = dataset
    write_json(out, res)
    return res["chosen"]


@step("selection-summary")
def selection_summary(selections: A[list[Path], "per-method selection files"],
                      out: A[Path, "selection.json"]) -> dict:
    """Merge the per-method selection files into selection.json."""
    from .evaluation.method_selection import merge_selections

    res = merge_selections([read_json(f) for f in selections])
    write_json(out, res)
    return res["chosen"]


@step("export-cvae")
def export_cvae(cvae: CVAEs, selection: A[Path, "selection.json"], out: A[Path, "CVAE folder"]) -> dict:
    """Copy the CVAE of SG-LoRA's chosen settings (run 0) for 'sglora generate'."""
    from .evaluation.method_selection import export_chosen

    return export_chosen(cvae, read_json(selection), out)


@step("ablation")
def ablation(selection: A[Path, "SG-LoRA's selection file (selection/sglora.json)"],
             paper: A[dict, 'JSON the paper-faithful settings, e.g. {"k": 4, "tau": 0.05, "temperature": 1.0}'],
             markdown: A[Path, "the ablation table (Markdown)"], csv: A[Path, "the ablation table (CSV)"],
             title: A[str, "the table's title"] = "SG-LoRA generator variants (validation tasks)",
             bootstrap: A[int, "bootstrap replicates of the 95% intervals"] = 2000) -> dict:
    """The ablation table of SG-LoRA's grid: every point's validation score, the chosen and
    the paper-faithful points marked (like supplementary Tables 11-12)."""
    from .analyses.ablation import ablation_rows, render_ablation
    from .io import atomic_path

    sel = read_json(selection)
    rows = ablation_rows(sel, paper, n_boot=bootstrap)
    text = render_ablation(rows, paper, title, tasks=len(sel.get("tasks") or []))
    for path, body in ((markdown, text["md"]), (csv, text["csv"])):
        with atomic_path(path) as tmp:
            tmp.write_text(body)
    return {"points": len(rows), "chosen": next(r["settings"] for r in rows if r["chosen"]),
            "paper_in_grid": any(r["paper"] for r in rows)}


def _show_premises(res: dict) -> str:
    from .analyses.premises import render_premises

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
             prior: PriorSpec = None, image_cache: Cache = None, gallery: Gallery = 0,
             device: Device = "auto") -> dict:
    """Check the benchmark's premises on the validation tasks (description-nearest expert in
    family, Oracle headroom, family transfer); on embedded worlds a failed premise is an error."""
    from .backbone.embed import read_embeddings
    from .io import atomic_path
    from .analyses.premises import check_premises, render_premises, task_family
    from .experts.repository import Repository

    repo = Repository(repository)
    experts = repo.experts()
    emb = read_embeddings(embeddings)
    embedded = set(embedded)
    families = {t: (task_family(r["task_name"]) if r["dataset"] in embedded else None) for t, r in emb.items()}
    enforce = premises.enforce if premises.enforce is not None else experts_dataset in embedded
    metrics = {name: tuple(dirs.split(",")) for name, dirs in (headroom or {}).items()}
    res = check_premises(backbone, manifest, emb, experts, repo.layout, repo.lora.scaling,
                         {"validation": list(tasks), "transfer": list(transfer)}, families, metrics, premises, enforce,
                         modality=(prior or settings_class("PriorSpec")()).modality, device=device, cache=image_cache, gallery=gallery)
    write_json(out, res)
    with atomic_path(markdown) as tmp:
        tmp.write_text(render_premises(res))
    return res


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
    from .generator.sampling import generate as one, generate_many, model_paths, read_descriptions

    if (description is None) == (descriptions is None):
        raise SGLoraError('give a description ("a photo of a zebra") or --descriptions FILE'
                          + (", not both" if description is not None else ""))
    repository, cvae = model_paths(results, repository, cvae)
    if description is not None:
        return one(description, repository, cvae, out, samples=samples, seed=seed, backbone=backbone,
                   overwrite=overwrite)
    return generate_many(read_descriptions(descriptions), repository, cvae, out, samples=samples, seed=seed,
                         backbone=backbone, overwrite=overwrite)


# --- evaluation and report -------------------------------------------------------------

@step("evaluate", device="device")
def evaluate(backbone: Backbone, manifest: Manifest, tasks: Tasks, method: A[str, "method id (written into the JSON)"],
             out: A[Path, "folder for <task>.json"], group: A[str, "evaluation group name written into the JSON"] = "",
             candidates: A[Path | None, "candidates file; omit for zero-shot CLIP"] = None, lora: LoraSpec = None,
             image_cache: Cache = None, gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """Evaluate a method's LoRA(s) (merged into the weights) on each task's test split."""
    from .evaluation.scoring import evaluate_method

    return evaluate_method(backbone, manifest, list(tasks), method, out, candidates, lora=lora or settings_class("LoraSpec")(),
                           group=group, threads=threads, device=device, cache=image_cache, gallery=gallery)


Metrics = A[dict[str, Path], "each group's metric folders ('sglora evaluate')", {"metavar": "GROUP/METHOD=DIR"}]
Groups = A[dict, "JSON of the evaluation groups (config groups)"]


@step("tables", show=lambda res: None)
def tables(metrics: Metrics, groups: Groups, out: A[Path, "tables folder"],
           selection: A[Path | None, "selection.json: its 'chosen' settings are footnoted"] = None,
           bootstrap: A[int, "bootstrap replicates of the 95% intervals"] = 2000,
           paper: A[dict | None, "JSON: the sglora_paper row's fixed settings (footnoted)"] = None,
           bootstrap_unit: A[str, "what a bootstrap replicate draws first: family (families, then their tasks) or task",
                             {"choices": ["family", "task"]}] = "family",
           embedded: A[list[str], "embedded datasets (their tasks' families: the family word)"] = ()) -> None:
    """Write the metric tables (CSV, Markdown, LaTeX) from the metric folders."""
    from .analyses.tables import read_selection, write_tables

    write_tables(metrics, out, groups, selection=read_selection(selection) if selection else None, n_boot=bootstrap,
                 paper=paper, embedded=embedded or (), unit=bootstrap_unit)


@step("results-page", show=lambda res: None)
def results_page(out: Out, title: A[str, "the page's title"], tables: A[Path, "tables folder"],
                 groups: A[list[str], "groups, in order (comma-separated)", SPLIT],
                 paired: A[list[str], "groups that have a paired table (comma-separated)", SPLIT] = (),
                 premises: A[Path | None, "premises.md"] = None,
                 benchmarks: A[Path | None, "the run's Snakemake benchmark folder"] = None,
                 threads: Threads = None, source: A[str, "what the page is the results of (a config file)"] = "") -> None:
    """Write a run's results page (premises, tables, paired tables, time per rule, provenance)."""
    from .analyses.results_page import write_results_page

    write_results_page(out, title, tables, list(groups), list(paired), premises, benchmarks, threads or 1, source)


@step("figures", show=lambda res: None)
def figures(repository: A[Path, "expert repository folder"], metrics: Metrics,
            candidates: A[dict[str, Path], "candidates files", {"metavar": "GROUP/METHOD=FILE"}],
            loras: A[dict[str, Path], "the unseen groups' Oracle LoRA folders", {"metavar": "DATASET/TASK=DIR"}],
            groups: Groups, out: A[Path, "figures folder"],
            samples_group: A[str, "group whose first task the samples t-SNE shows (Figure 10)"] = "") -> None:
    """Draw the figures (t-SNE of expert LoRAs, of samples, R@1 bars)."""
    from .analyses.figures import write_figures

    write_figures(out, repository=repository, metrics=metrics, candidates=candidates, loras=loras or {},
                  groups=groups, samples_group=samples_group or None)


# --- learned baselines -----------------------------------------------------------------


@step("train-multitask", device="training")
def train_multitask(backbone: Backbone, manifest: A[Path, "task manifest with the experts' training pairs"],
                    tasks: A[list[str], "the experts' task ids (comma-separated): the training data", SPLIT],
                    validation: A[list[str], "validation task ids (comma-separated): its epochs are chosen on them",
                                  SPLIT],
                    out: A[Path, "output folder: snapshots.safetensors, adapter/, training.json"],
                    lora: LoraSpec, training: TrainSpec, multitask: MultitaskSpec,
                    validation_manifest: A[Path | None, "task manifest of the validation tasks (default: "
                                                        "--manifest)"] = None,
                    image_cache: Cache = None,
                    validation_cache: A[Path | None, "the validation dataset's image cache"] = None,
                    gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """Multi-task LoRA baseline: one LoRA trained on the union of the experts' training
    pairs (the experts' rank, targets and trainer), its epochs chosen on the validation tasks."""
    from .baselines.multitask import train_multitask as run

    info = run(backbone, manifest, list(tasks), validation_manifest or manifest, list(validation), out, lora, training,
               multitask, threads=threads, device=device, cache=image_cache, validation_cache=validation_cache,
               gallery=gallery)
    return {"pairs": info["pairs"], "tasks": len(info["tasks"])} | info["selection"]["chosen"]


@step("train-mole", device="mole")
def train_mole(backbone: A[str, "model id or local folder (the repository's backbone)"],
               manifest: A[Path, "task manifest with the seen tasks' training pairs"],
               tasks: A[list[str], "seen task ids to train the gates on (comma-separated)", SPLIT],
               repository: A[Path, "expert repository folder (the N expert LoRAs)"], out: A[Path, "output folder"],
               mole: MoLESpec, image_cache: Cache = None, threads: Threads = None) -> dict:
    """MoLE baseline: train the per-layer gates that mix the repository's expert LoRAs (their
    mean snapshots), on the union of the seen tasks' training pairs (contrastive loss +
    gating-balance loss; backbone and experts frozen). Writes gates.safetensors,
    experts.safetensors, config.json."""
    from .baselines.mole import train_mole as train

    info = train(backbone, manifest, list(tasks), repository, out, mole, threads=threads, cache=image_cache)
    return {"experts": len(info["experts"]), "tasks": len(info["tasks"]), "final": info["history"][-1],
            "probe_before": info["probe_before"], "probe_after": info["probe_after"]}


@step("evaluate-mole", device="device")
def evaluate_mole(backbone: Backbone, manifest: A[Path, "task manifest with the tasks' test pairs"], tasks: Tasks,
                  mole: A[Path, "trained MoLE folder (train-mole)"], out: A[Path, "folder for <task>.json"],
                  group: A[str, "evaluation group name written into the JSON"] = "", image_cache: Cache = None,
                  gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """MoLE baseline: evaluate the gated model on each task's test split (the gate depends on
    the input, so it is not merged into the weights) and write <out>/<task>.json like
    'sglora evaluate'."""
    from .baselines.mole import evaluate_mole as run

    return run(backbone, manifest, list(tasks), mole, out, group=group, threads=threads, device=device,
               cache=image_cache, gallery=gallery)


def _embeddings(path: Path | None, dataset: str | None):
    if not path:
        return None
    from .backbone.embed import read_embeddings

    return read_embeddings(path, dataset)


@step("train-pdiff", device="pdiff")
def train_pdiff(repository: A[Path, "expert repository folder (the snapshots)"], tasks: A[list[str], "seen task ids (comma-separated)", SPLIT],
                out: A[Path, "output folder (<model>.safetensors, config.json)"], pdiff: PDiffSpec,
                conditional: A[bool, "COND P-Diff (one text-conditioned model) instead of P-diff (one model per "
                                     "task)"] = False,
                embeddings: A[Path | None, "task embedding table (COND P-Diff conditions; defaults to the "
                                           "repository's embeddings)"] = None,
                dataset: Dataset = None, threads: A[int | None, "CPU threads"] = None) -> dict:
    """P-diff / COND P-Diff baselines: train a parameter autoencoder + latent DDPM on the
    repository's snapshots; one unconditional model per task (P-diff, --no-conditional)
    or one model for all tasks conditioned on their text embeddings (COND P-Diff,
    --conditional). Seen-task baselines (supp. Table 13). --pdiff takes the config section
    pdiff or cond_pdiff."""
    from .baselines.pdiff import train_pdiff as train

    return train(repository, list(tasks), out, pdiff, conditional, embeddings=_embeddings(embeddings, dataset),
                 threads=threads)


@step("sample-pdiff")
def sample_pdiff(model: A[Path, "trained P-diff folder (train-pdiff)"],
                 repository: A[Path, "expert repository (the LoRA layout)"], tasks: Tasks,
                 out: A[Path, "candidates file (.safetensors)"],
                 embeddings: A[Path | None, "task embedding table (COND P-Diff conditions)"] = None,
                 dataset: Dataset = None,
                 samples: A[int | None, "N samples per task (default: the spec's samples)"] = None,
                 seed: A[int | None, "sampling seed (default: the spec's seed)"] = None) -> dict:
    """P-diff / COND P-Diff baselines: sample N LoRAs per task (seeded per task) from a
    trained model and write a candidates file (method pdiff or cond_pdiff) for 'sglora evaluate'."""
    from .baselines.pdiff import sample_pdiff as run

    return run(model, repository, list(tasks), out, embeddings=_embeddings(embeddings, dataset), samples=samples,
               seed=seed)


# --- studies (workflow/studies/) ---------------------------------------------------------

@step("study-config")
def study_config(base: A[Path, "the base pipeline config (YAML)"],
                 experts_per_family: A[int, "experts kept per family (the first ones listed)"],
                 results: A[str, "the size's results folder"], out: A[Path, "the derived config (YAML)"]) -> dict:
    """Repository-size study: one size's pipeline config, the base config with the first N
    experts of every family and its own results folder."""
    import yaml

    from .io import atomic_path
    from .analyses.studies import size_config

    try:
        cfg = yaml.safe_load(Path(base).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SGLoraError(f"{base}: cannot read the base config ({err})") from err
    cfg = size_config(cfg, experts_per_family, results)
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return {"experts_per_family": experts_per_family, "experts": cfg["experts"]["tasks"]}


@step("study-collect")
def study_collect(config: A[Path, "the size's pipeline config (its experts are recorded)"],
                  experts_per_family: A[int, "the size"],
                  metrics: A[dict[str, Path], "metrics files of the compared methods", {"metavar": "METHOD/TASK=FILE"}],
                  out: Out) -> dict:
    """Repository-size study: one size's compared metrics files, collected into one JSON."""
    import yaml

    from .analyses.studies import collect_size

    experts = yaml.safe_load(Path(config).read_text())["experts"]["tasks"]
    write_json(out, collect_size(experts_per_family, experts, metrics))
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
    from .analyses.studies import write_study

    rows = write_study([read_json(f) for f in sizes], list(against), markdown, out, figures, title=title,
                       n_boot=bootstrap)
    return {"rows": len(rows)}


# --- what the generator adds: generator baselines, LoRA spaces, novelty ----------------

Repository = A[Path, "expert repository folder"]
Embeddings = A[Path, "task embedding table"]
Bootstrap = A[int, "bootstrap replicates of the 95% intervals"]


@step("generator-candidates")
def generator_candidates(method: A[str, "the generator baseline", {"choices": [m for m, v in METHODS.items()
                                                                              if v.candidates == "generator-candidates"]}],
                         tasks: Tasks, repository: Repository, embeddings: Embeddings,
                         out: A[Path, "candidates file (.safetensors)"], dataset: Dataset = None,
                         prior: PriorSpec = None, sampling: SamplingSpec = None, noisy_expert: NoisySpec = None,
                         selection: A[Path | None, "SG-LoRA's selection file (its chosen k, tau)"] = None,
                         sglora: A[Path | None, "SG-LoRA's candidates of the same tasks (noisy_expert's spread)"] = None,
                         seen: A[bool, "seen tasks: leave the task's own expert out"] = False) -> dict:
    """Generator baselines: N draws from the semantic prior N(mu*, sigma*^2) (prior_sampling),
    or the description-nearest expert plus Gaussian noise of SG-LoRA's spread (noisy_expert);
    as many samples and runs as SG-LoRA. Writes a candidates file for 'sglora evaluate'."""
    from .generator.candidates import load_candidates, save_candidates
    from .backbone.embed import read_embeddings
    from .baselines.controls import generator_candidates as run
    from .experts.repository import Repository as Repo
    from .evaluation.method_selection import apply_settings

    repo = Repo(repository)
    chosen = _chosen(selection, "sglora")  # SG-LoRA's prior, chosen on the validation tasks
    prior, sampling = apply_settings(chosen, prior or settings_class("PriorSpec")(), sampling or settings_class("SamplingSpec")())
    sg = sg_info = None
    if sglora:
        sg, layout, meta = load_candidates(sglora)
        sg_info = meta["info"]
        if layout.dim != repo.layout.dim:
            raise SGLoraError(f"{sglora}: SG-LoRA's candidates are not in the repository's layout")
    vecs, info = run(method, list(tasks), repo.experts(), read_embeddings(embeddings, dataset), prior, sampling, sg,
                     sg_info, noisy_expert or settings_class("NoisySpec")(), seen=seen)
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
                  prior: PriorSpec = None, image_cache: Cache = None, gallery: Gallery = 0, threads: Threads = None,
                  device: Device = "auto") -> dict:
    """LoRA spaces: choose each merging method's settings within each space (factors,
    product, product_svd) on the validation tasks."""
    from .backbone.embed import read_embeddings
    from .experts.repository import Repository as Repo
    from .analyses.space_comparison import select_spaces

    repo = Repo(repository)
    res = select_spaces(backbone, manifest, list(tasks), spaces.get("methods", []), spaces.get("compare", []),
                        grid or {}, repo.experts(), repo.layout, read_embeddings(embeddings, dataset),
                        prior or settings_class("PriorSpec")(), repo.lora.scaling, threads=threads, device=device, cache=image_cache,
                        gallery=gallery)
    res["dataset"] = dataset
    write_json(out, res)
    return res["chosen"]


@step("spaces-evaluate", device="device")
def spaces_evaluate(backbone: Backbone, manifest: Manifest, tasks: Tasks, repository: Repository,
                    embeddings: Embeddings, selection: A[Path, "spaces selection JSON (spaces-select)"],
                    out: A[Path, "output folder (candidates/, metrics/)"],
                    markdown: A[Path, "the table of spaces (Markdown)"], csv: A[Path, "the table of spaces (CSV)"],
                    dataset: Dataset = None, prior: PriorSpec = None, group: A[str, "evaluation group"] = "",
                    title: A[str, "the table's title"] = "", seen: A[bool, "seen tasks"] = False,
                    bootstrap: Bootstrap = 2000, image_cache: Cache = None, gallery: Gallery = 0,
                    threads: Threads = None, device: Device = "auto") -> dict:
    """LoRA spaces: every (merging method, space) with its validation-chosen settings on a
    group's test tasks; writes candidates/ and metrics/ into --out and the table of spaces."""
    from .backbone.embed import read_embeddings
    from .io import atomic_path
    from .experts.repository import Repository as Repo
    from .analyses.space_comparison import evaluate_spaces, write_space_table

    repo, sel = Repo(repository), read_json(selection)
    with atomic_path(out, directory=True) as tmp:
        evaluate_spaces(backbone, manifest, list(tasks), sel, repo.experts(), repo.layout,
                        read_embeddings(embeddings, dataset), prior or settings_class("PriorSpec")(), repo.lora.scaling, tmp,
                        group=group, seen=seen, threads=threads, device=device, cache=image_cache, gallery=gallery)
    write_space_table(Path(out) / "metrics", sel, list(tasks), title or group, markdown, csv, n_boot=bootstrap)
    return {"group": group, "table": str(markdown)}


@step("novelty", device="device")
def novelty(backbone: Backbone, manifest: Manifest, tasks: Tasks, repository: Repository, embeddings: Embeddings,
            cvae: A[Path, "trained CVAE folder (its normalisation defines the normalised space)"],
            candidates: A[dict[str, Path], "generated LoRAs per method", {"metavar": "METHOD=FILE"}],
            metrics: A[dict[str, Path], "the methods' metrics folders", {"metavar": "METHOD=DIR"}],
            out: A[Path, "novelty JSON"], markdown: A[Path, "novelty table (Markdown)"],
            figure: A[Path, "figure (.png; a .pdf beside it)"], dataset: Dataset = None, prior: PriorSpec = None,
            group: A[str, "evaluation group"] = "", title: A[str, "the table's title"] = "",
            seen: A[bool, "seen tasks"] = False, bootstrap: Bootstrap = 2000, image_cache: Cache = None,
            gallery: Gallery = 0, threads: Threads = None, device: Device = "auto") -> dict:
    """Novelty of a group's generated LoRAs: distance to the nearest training snapshot
    (CVAE-normalised and ΔW space) against the repository's within- and between-expert
    distances, and agreement of retrieval ranks with the nearest snapshot's (evaluated here
    on the same test queries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .backbone.embed import read_embeddings
    from .analyses.figures import _save
    from .io import atomic_path
    from .analyses.novelty import novelty_figure, novelty_of_group, render_novelty

    res = novelty_of_group(backbone, manifest, list(tasks), repository, cvae, {m: str(p) for m, p in candidates.items()},
                           {m: str(p) for m, p in metrics.items()}, read_embeddings(embeddings, dataset),
                           modality=(prior or settings_class("PriorSpec")()).modality, seen=seen, threads=threads, device=device,
                           cache=image_cache, gallery=gallery, n_boot=bootstrap)
    names = {m: v.label for m, v in METHODS.items()}
    write_json(out, res)
    with atomic_path(markdown) as tmp:
        tmp.write_text(render_novelty(res, title or group, names))
    fig = novelty_figure(res, title or group, names)
    _save(fig, Path(figure).parent, Path(figure).stem)
    plt.close(fig)
    return {"group": group, "methods": sorted(candidates)}


@step("select-training", device="device")
def select_training(backbone: Backbone, manifest: Manifest, tasks: A[list[str], "validation task ids", SPLIT],
                    grid: A[dict, 'JSON grid of trainer settings, e.g. {"lr": [0.003, 0.01, 0.03]}'],
                    out: A[Path, "selection JSON"], lora: LoraSpec = None, training: TrainSpec = None,
                    image_cache: Cache = None, gallery: Gallery = 0, threads: Threads = None,
                    device: Device = "auto") -> dict:
    """Choose the LoRA trainer's settings (e.g. the lr of the frozen_a space) on the validation
    tasks: one LoRA per grid point and task, trained on the task's own pairs, its final
    snapshot scored on its test split."""
    from .evaluation.trainer_selection import select_training as run

    res = run(backbone, manifest, list(tasks), lora or settings_class("LoraSpec")(),
              training or settings_class("TrainSpec")(), grid, threads=threads,
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
    from .io import atomic_path
    from .analyses.space_comparison import runs_table

    sels = {k: read_json(v).get("chosen", {}) for k, v in (selections or {}).items()}
    folders: dict[str, dict[str, str]] = {}
    for key, folder in runs.items():
        space, sep, method = key.partition("/")
        if not (sep and space and method):
            raise SGLoraError(f"--runs: {key!r} is not SPACE/METHOD")
        folders.setdefault(space, {})[method] = str(folder)
    text = runs_table(folders, group, list(methods), list(tasks), title or group, sels,
                      reference, bootstrap)["md"]
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return {"group": group, "runs": sorted(runs)}
