"""``sglora``: one subcommand per pipeline step. The Snakemake rules call these; each
also runs on its own (``sglora <step> --help``).

Settings arrive as JSON strings (``--lora '{"rank": 2}'``) so a rule passes exactly its
config section, and Snakemake reruns a step when, and only when, its section changes.
"""

from __future__ import annotations

import argparse
import json

from .io import comma_list as _list
from .io import json_object as _json
import sys
from pathlib import Path




# --- handlers ----------------------------------------------------------------------

def cmd_world(a):
    from .world import generate_world

    opts = _json(a.options)
    print(json.dumps(generate_world(a.out, seed=a.seed, **opts)))


def cmd_pretrain(a):
    from .backbone import pretrain_clip
    from .world import pretraining_pairs

    pairs = pretraining_pairs(a.worlds)
    opts = _json(a.options, "--options")
    print(json.dumps(pretrain_clip(a.out, pairs.images, pairs.texts, pairs.vocab, seed=a.seed, threads=a.threads,
                                   describes=pairs.describes, **opts)))


def cmd_check_tasks(a):
    from .io import write_json
    from .manifest import check_tasks

    manifests = dict(m.split("=", 1) for m in a.manifest)
    wanted = _json(a.wanted)
    counts = check_tasks(manifests, wanted)
    # only the checked tasks: the file of one task's check does not change with the others
    checked: dict[str, set] = {}
    for by in wanted.values():
        for d, tasks in by.items():
            checked.setdefault(d, set()).update(tasks)
    write_json(a.out, {d: {t: n for t, n in per.items() if t in checked.get(d, ())} for d, per in counts.items()})
    print(json.dumps({d: len(t) for d, t in counts.items()}))


def cmd_embed(a):
    from .embed import embed_tasks

    manifests = dict(m.split("=", 1) for m in a.manifest)
    caches = dict(m.split("=", 1) for m in a.image_cache)
    print(json.dumps(embed_tasks(a.backbone, manifests, a.out, template=a.template or None, device=a.device,
                                 caches=caches, workers=a.threads or 0)))


def cmd_image_cache(a):
    from .backbone import load_clip
    from .images import build_cache
    from .manifest import read_manifest

    _, processor = load_clip(a.backbone)
    paths = read_manifest(a.manifest).column("image_path").to_pylist()
    print(json.dumps(build_cache(paths, processor, a.out, workers=a.threads or 1)))


def cmd_train_lora(a):
    from .expert import TrainSpec, train_lora
    from .lora import LoraSpec

    info = train_lora(a.backbone, a.manifest, a.task, a.out, LoraSpec.from_dict(_json(a.lora)),
                      TrainSpec.from_dict(_json(a.training)), threads=a.threads, cache=a.image_cache)
    print(json.dumps({k: info[k] for k in ("task", "pairs", "dim", "snapshots")} | {"final_loss": info["losses"][-1]}))


def cmd_assemble(a):
    from .embed import read_embeddings
    from .repository import assemble

    emb = read_embeddings(a.embeddings, a.dataset)
    experts = [{"task": Path(d).name, "lora_dir": d} for d in a.loras]
    print(json.dumps(assemble(a.out, experts, emb)))


def cmd_train_cvae(a):
    import numpy as np

    from .cvae import CVAESpec, save_cvae, train_cvae
    from .generate import PriorSpec
    from .prior import training_conditions
    from .repository import Repository

    repo = Repository(a.repository)
    spec, prior = CVAESpec.from_dict(_json(a.cvae)), PriorSpec.from_dict(_json(a.prior))
    condition = spec.condition
    experts = repo.experts()
    tasks, vecs = [], []
    for t, v in repo.iter_snapshots():
        tasks += t
        vecs.append(v)
    index = np.array([experts.tasks.index(t) for t in tasks])
    cm, cv = training_conditions(experts.embedding(prior.modality), experts.mu, experts.var, prior.k, prior.tau, condition)
    model, history = train_cvae(np.concatenate(vecs), index, cm, cv, spec, threads=a.threads)
    from dataclasses import asdict

    save_cvae(a.out, model, {"prior": asdict(prior), "condition": condition, "history": history,
                             "repository": str(a.repository)})
    print(json.dumps(history[-1]))


def _chosen(path: str | None, method: str) -> dict:
    """A method's settings chosen on the validation tasks (``{}`` without a selection file)."""
    if not path:
        return {}
    from .io import read_json

    return read_json(path).get("chosen", {}).get(method, {})


def _load_cvaes(dirs: list[str]):
    from .selection import TrainedCVAEs

    return TrainedCVAEs(dirs)


def cmd_candidates(a):
    """Candidate LoRAs of one method for the tasks of one group."""

    from .candidates import save_candidates
    from .embed import read_embeddings
    from .generate import PriorSpec, SamplingSpec
    from .repository import Repository
    from .selection import method_candidates

    tasks = _list(a.tasks)
    method = a.method
    if method == "oracle":
        from .expert import read_snapshots

        vecs, layout = {}, None
        for d in a.loras:
            snaps, layout = read_snapshots(d)
            vecs[Path(d).name] = snaps[-1:]
        save_candidates(a.out, vecs, layout, method, {t: {"kind": "trained on the task's own data"} for t in vecs})
        return
    repo = Repository(a.repository)
    experts = repo.experts()
    prior, sampling = PriorSpec.from_dict(_json(a.prior, "--prior")), SamplingSpec.from_dict(_json(a.sampling, "--sampling"))
    settings = _chosen(a.selection, method)
    emb = read_embeddings(a.embeddings, a.dataset)
    vecs, info = method_candidates(method, settings, tasks, experts, emb, prior,
                                   sampling, cvaes=_load_cvaes(a.cvae) if method == "sglora" else None, seen=a.seen)
    for t in info:
        info[t]["settings"] = settings
    if method == "sglora" and a.adapters:
        from .lora import save_adapter

        for t, v in vecs.items():
            for i, vec in enumerate(v):
                save_adapter(Path(a.adapters) / t / f"sample_{i:03d}", vec, repo.layout, repo.lora, repo.backbone,
                             {"task": t, "description": emb[t]["description"], "seed": info[t]["seeds"][info[t]["runs"][i]],
                              "run": info[t]["runs"][i], "sample": i, "experts": info[t]["experts"], "kind": "sglora"})
        Path(a.adapters).mkdir(parents=True, exist_ok=True)
    save_candidates(a.out, vecs, repo.layout, method, info)
    print(json.dumps({"method": method, "tasks": len(vecs), "settings": settings}))


def cmd_select(a):
    from .embed import read_embeddings
    from .generate import PriorSpec, SamplingSpec
    from .io import write_json
    from .lora import LoraSpec
    from .repository import Repository

    from .selection import select_settings

    repo = Repository(a.repository)
    res = select_settings(a.backbone, a.manifest, _list(a.tasks), _json(a.grid, "--grid"), repo.experts(),
                          read_embeddings(a.embeddings, a.dataset), PriorSpec.from_dict(_json(a.prior, "--prior")),
                          SamplingSpec.from_dict(_json(a.sampling, "--sampling")),
                          LoraSpec.from_dict(_json(a.lora, "--lora")).scaling, repo.layout,
                          cvaes=_load_cvaes(a.cvae) if a.cvae else None, threads=a.threads, device=a.device,
                          cache=a.image_cache, gallery=a.gallery)
    res["dataset"] = a.dataset
    write_json(a.out, res)
    print(json.dumps(res["chosen"]))


def cmd_selection_summary(a):
    from .io import read_json, write_json
    from .selection import merge_selections

    res = merge_selections([read_json(f) for f in a.selections])
    write_json(a.out, res)
    print(json.dumps(res["chosen"]))


def cmd_export_cvae(a):
    from .io import read_json
    from .selection import export_chosen

    print(json.dumps(export_chosen(a.cvae, read_json(a.selection), a.out)))


def cmd_premises(a):
    from .embed import read_embeddings
    from .io import atomic_path, write_json
    from .premises import PremiseSpec, check_premises, render_premises, task_family
    from .repository import Repository

    repo = Repository(a.repository)
    experts = repo.experts()
    emb = read_embeddings(a.embeddings)
    embedded = set(a.embedded)
    families = {t: (task_family(r["task_name"]) if r["dataset"] in embedded else None) for t, r in emb.items()}
    spec = PremiseSpec.from_dict(_json(a.spec, "--spec"))
    enforce = spec.enforce if spec.enforce is not None else a.experts_dataset in embedded
    metrics = {}
    for item in a.headroom:
        group, dirs = item.split("=", 1)
        zs, orc = dirs.split(",")
        metrics[group] = (zs, orc)
    res = check_premises(a.backbone, a.manifest, emb, experts, repo.layout, repo.lora.scaling,
                         {"groups": _list(a.unseen), "transfer": a.transfer}, families, metrics, spec, enforce,
                         modality=_json(a.prior, "--prior").get("modality", "textual"), device=a.device,
                         cache=a.image_cache, gallery=a.gallery)
    write_json(a.out, res)
    with atomic_path(a.markdown) as tmp:
        tmp.write_text(render_premises(res))
    print(render_premises(res))


def cmd_evaluate(a):
    from .evaluate import evaluate_method
    from .lora import LoraSpec

    scaling = LoraSpec.from_dict(_json(a.lora)).scaling
    res = evaluate_method(a.backbone, a.manifest, _list(a.tasks), a.method, a.out, a.candidates, scaling,
                          group=a.group, threads=a.threads, device=a.device, cache=a.image_cache, gallery=a.gallery)
    print(json.dumps(res))


def cmd_generate(a):
    from .generate import generate

    res = generate(a.description, a.repository, a.cvae, a.out, samples=a.samples, seed=a.seed, backbone=a.backbone,
                   overwrite=a.overwrite)
    print(f"description: {res['description']}")
    print("experts used (top-K, alpha):")
    for e in res["experts"]:
        print(f"  {e['name']:<30} sim={e['similarity']:.3f}  alpha={e['alpha']:.3f}")
    for d in res["adapters"]:
        print(f"wrote {d}")


def cmd_tables(a):
    from .tables import read_selection, write_tables

    selection = read_selection(a.selection) if a.selection else None
    write_tables(a.metrics, a.out, _json(a.groups), selection=selection, n_boot=a.bootstrap)


def cmd_figures(a):
    from .figures import write_figures

    write_figures(a.out, repository=a.repository, metrics=a.metrics, candidates=a.candidates, loras=a.loras,
                  groups=_json(a.groups), samples_group=a.samples_group or None)


# --- parser ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sglora", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(func=func)
        return sp

    def add_device(sp):
        sp.add_argument("--device", default="auto", help='torch device: "auto" = cuda when available, else cpu')
        sp.set_defaults(device_of=lambda a: a.device)

    s = add("world", cmd_world, "Generate one domain of the embedded benchmark's synthetic world (images, manifest, captions).")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="world seed (family looks and images)")
    s.add_argument("--options", help="JSON: domain, classes, images_per_class, test_per_class, image_size, template")

    s = add("pretrain", cmd_pretrain, "Pretrain the embedded benchmark's small CLIP on coarse captions of all classes.")
    s.add_argument("--worlds", nargs="+", required=True, help="world folders written by 'sglora world'")
    s.add_argument("--out", required=True, help="output folder (save_pretrained layout)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--options", help="JSON: epochs, batch_size, lr, sizes")

    s = add("check-tasks", cmd_check_tasks, "Check that every configured expert and evaluation task exists in its "
            "dataset with captioned train and test images, before any training starts.")
    s.add_argument("--manifest", nargs="+", required=True, metavar="DATASET=FILE", help="task manifests")
    s.add_argument("--wanted", required=True, help='JSON {"config key": {"dataset": ["task", ...]}}')
    s.add_argument("--out", required=True, help="JSON summary: images per task and split")

    s = add("embed", cmd_embed, "Embed every task's description (text) and training images (visual) with the frozen backbone.")
    s.add_argument("--backbone", required=True, help="model id or local folder")
    s.add_argument("--manifest", nargs="+", required=True, metavar="DATASET=FILE", help="task manifests")
    s.add_argument("--template", default="", help="description template, e.g. 'a photo of a <class name>'")
    s.add_argument("--image-cache", nargs="*", default=[], metavar="DATASET=DIR", help="image caches (sglora image-cache)")
    add_device(s)
    s.add_argument("--threads", type=int, default=None, help="DataLoader workers")
    s.add_argument("--out", required=True)

    s = add("image-cache", cmd_image_cache, "Decode, resize and crop every image of a manifest once, with the "
            "backbone's image processor, into a uint8 cache that training, evaluation and embedding stream from.")
    s.add_argument("--backbone", required=True, help="model id or local folder (its image processor sets the size)")
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True, help="cache root; the cache goes to <out>/<processor key>/")
    s.add_argument("--threads", type=int, default=None, help="decoding worker processes")

    s = add("train-lora", cmd_train_lora, "Train one task's LoRA (an expert for a seen task, the Oracle for an unseen one).")
    s.add_argument("--backbone", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--task", required=True, help="task id")
    s.add_argument("--out", required=True, help="output folder: snapshots.safetensors, adapter/, training.json")
    s.add_argument("--lora", help="JSON LoRA spec (rank, alpha, target_modules, towers, init_seed)")
    s.add_argument("--training", help="JSON training spec (epochs, snapshots, lr, batch_size, seed, device, bf16)")
    s.add_argument("--image-cache", default=None, help="the dataset's image cache (sglora image-cache)")
    s.add_argument("--threads", type=int, default=None, help="torch threads and DataLoader workers")
    s.set_defaults(device_of=_training_device)

    s = add("assemble", cmd_assemble, "Stream expert LoRAs into the Parquet expert repository.")
    s.add_argument("--loras", nargs="+", required=True, help="trained LoRA folders (folder name = task id)")
    s.add_argument("--embeddings", required=True, help="task embedding table")
    s.add_argument("--dataset", default=None, help="dataset of the experts (to pick their embeddings)")
    s.add_argument("--out", required=True, help="repository folder")

    s = add("train-cvae", cmd_train_cvae, "Train the conditional VAE on all snapshots of the repository.")
    s.add_argument("--repository", required=True)
    s.add_argument("--cvae", help="JSON CVAE spec")
    s.add_argument("--prior", help="JSON prior spec (k, tau, modality)")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(device_of=_cvae_device)

    s = add("candidates", cmd_candidates, "Write a method's candidate LoRA(s) for each task of a group "
            "(sglora samples, oracle, model_soups, adaptersoup, topk_weighted).")
    s.add_argument("--method", required=True, choices=["sglora", "oracle", "model_soups", "adaptersoup", "topk_weighted"])
    s.add_argument("--tasks", default="", help="comma-separated task ids")
    s.add_argument("--dataset", default=None, help="dataset of the tasks (for their embeddings)")
    s.add_argument("--repository")
    s.add_argument("--embeddings")
    s.add_argument("--cvae", nargs="*", default=[], help="trained CVAE folders (sglora): the runs of every variant; "
                   "those matching the chosen settings are used")
    s.add_argument("--prior", help="JSON prior spec")
    s.add_argument("--sampling", help="JSON: samples, seed, temperature, runs (sglora)")
    s.add_argument("--selection", default=None, help="selection.json: the settings chosen on the validation tasks")
    s.add_argument("--seen", action="store_true", help="the tasks are experts (seen tasks): build their condition as "
                   "in the CVAE's training, and leave a task out of its own merge")
    s.add_argument("--adapters", help="also write each sample as a PEFT adapter folder here (sglora)")
    s.add_argument("--loras", nargs="*", default=[], help="trained LoRA folders (oracle)")
    s.add_argument("--out", required=True)

    s = add("select", cmd_select, "Choose every method's settings on the validation tasks (writes selection.json).")
    s.add_argument("--backbone", required=True)
    s.add_argument("--manifest", required=True, help="task manifest of the validation tasks' dataset")
    s.add_argument("--tasks", required=True, help="comma-separated validation task ids")
    s.add_argument("--dataset", default=None, help="dataset of the validation tasks (for their embeddings)")
    s.add_argument("--grid", required=True, help='JSON {"method": {"setting": [values, ...]}}')
    s.add_argument("--repository", required=True)
    s.add_argument("--embeddings", required=True)
    s.add_argument("--cvae", nargs="*", default=[], help="trained CVAE folders (every variant and run)")
    s.add_argument("--prior", help="JSON prior spec (defaults for settings a grid does not vary)")
    s.add_argument("--sampling", help="JSON sampling spec")
    s.add_argument("--lora", help="JSON LoRA spec (for the scaling alpha / rank)")
    s.add_argument("--image-cache", default=None, help="the validation dataset's image cache (sglora image-cache)")
    s.add_argument("--gallery", type=int, default=0, help="retrieval within galleries of this many test images (0 = whole task)")
    add_device(s)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=None)

    s = add("selection-summary", cmd_selection_summary, "Merge the per-method selection files into selection.json.")
    s.add_argument("--selections", nargs="+", required=True, help="per-method selection files")
    s.add_argument("--out", required=True)

    s = add("export-cvae", cmd_export_cvae, "Copy the CVAE of SG-LoRA's chosen settings (run 0) for 'sglora generate'.")
    s.add_argument("--cvae", nargs="+", required=True, help="trained CVAE folders (every variant and run)")
    s.add_argument("--selection", required=True, help="selection.json")
    s.add_argument("--out", required=True)

    s = add("premises", cmd_premises, "Check the benchmark's premises (description-nearest expert in family, "
            "Oracle headroom, family transfer); on embedded worlds a failed premise is an error.")
    s.add_argument("--backbone", required=True)
    s.add_argument("--manifest", required=True, help="task manifest of the experts' dataset")
    s.add_argument("--experts-dataset", required=True, help="the experts' dataset name")
    s.add_argument("--repository", required=True)
    s.add_argument("--embeddings", required=True)
    s.add_argument("--embedded", nargs="*", default=[], help="embedded datasets (their classes have families)")
    s.add_argument("--unseen", required=True, help="comma-separated unseen tasks (groups and validation)")
    s.add_argument("--transfer", nargs="*", default=[], help="unseen tasks of the experts' dataset")
    s.add_argument("--headroom", nargs="*", default=[], metavar="GROUP=ZERO_SHOT_DIR,ORACLE_DIR")
    s.add_argument("--prior", help="JSON prior spec (modality)")
    s.add_argument("--spec", help="JSON premises section")
    s.add_argument("--image-cache", default=None, help="the experts' dataset's image cache (sglora image-cache)")
    s.add_argument("--gallery", type=int, default=0, help="retrieval within galleries of this many test images (0 = whole task)")
    add_device(s)
    s.add_argument("--out", required=True, help="premises.json")
    s.add_argument("--markdown", required=True, help="premises.md")

    s = add("evaluate", cmd_evaluate, "Evaluate a method's LoRA(s) (merged into the weights) on each task's test split.")
    s.add_argument("--backbone", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--tasks", required=True)
    s.add_argument("--method", required=True)
    s.add_argument("--group", default="")
    s.add_argument("--candidates", default=None, help="candidates file; omit for zero-shot CLIP")
    s.add_argument("--lora", help="JSON LoRA spec (for the scaling alpha / rank)")
    s.add_argument("--out", required=True, help="folder for <task>.json")
    s.add_argument("--image-cache", default=None, help="the dataset's image cache (sglora image-cache)")
    s.add_argument("--gallery", type=int, default=0, help="retrieval within galleries of this many test images (0 = whole task)")
    s.add_argument("--threads", type=int, default=None, help="torch threads and DataLoader workers")
    add_device(s)

    s = add("generate", cmd_generate, "Generate LoRA adapter(s) for any text description with the trained SG-LoRA.")
    s.add_argument("description", help='e.g. "a photo of a zebra"')
    s.add_argument("--out", required=True, help="adapter folder (or parent of sample_NNN folders)")
    s.add_argument("--overwrite", action="store_true",
                   help="write into an existing non-empty --out, replacing only the adapter files written here")
    s.add_argument("--samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--repository", default="results/embedded/repository")
    s.add_argument("--cvae", default="results/embedded/cvae/selected")
    s.add_argument("--backbone", default=None, help="defaults to the repository's backbone")

    s = add("tables", cmd_tables, "Write the metric tables (CSV, Markdown, LaTeX) from the metrics folders.")
    s.add_argument("--metrics", required=True, help="metrics root folder")
    s.add_argument("--groups", required=True, help="JSON of the evaluation groups")
    s.add_argument("--selection", default=None, help="selection.json: its 'chosen' settings are footnoted")
    s.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates of the 95%% intervals")
    s.add_argument("--out", required=True)

    s = add("figures", cmd_figures, "Draw the figures (t-SNE of expert LoRAs, of samples, R@1 bars).")
    s.add_argument("--repository", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--candidates", required=True, help="candidates root folder")
    s.add_argument("--loras", required=True, help="trained LoRAs root folder")
    s.add_argument("--groups", required=True)
    s.add_argument("--samples-group", default="", help="group whose first task the samples t-SNE shows (Figure 10)")
    s.add_argument("--out", required=True)

    try:
        from . import cli_data
    except ImportError:
        cli_data = None
    if cli_data is not None:
        cli_data.register(sub)
    try:
        from .baselines import cli as baseline_cli
    except ImportError:
        baseline_cli = None
    if baseline_cli is not None:
        baseline_cli.register(sub)
    from . import cli_generators  # issue #15: generator baselines, LoRA spaces, novelty

    cli_generators.register(sub)
    return p


def _training_device(a) -> str:
    from .expert import TrainSpec

    return TrainSpec.from_dict(_json(a.training)).device


def _cvae_device(a) -> str:
    from .cvae import CVAESpec

    return CVAESpec.from_dict(_json(a.cvae)).device


def device_setting(args: argparse.Namespace) -> str | None:
    """The device setting ("auto", "cuda", "cpu" ...) a parsed heavy step will run on,
    read from its flags and spec the way the step reads it; ``None`` for light steps."""
    of = getattr(args, "device_of", None)
    return of(args) if of else None


def step_device(argv: list[str]):
    """The torch device the step ``argv`` (``["train-lora", ...]``) would run on, without
    running it."""
    from .backbone import pick_device

    setting = device_setting(build_parser().parse_args(argv))
    return None if setting is None else pick_device(setting)


def claim_gpu(args: argparse.Namespace):
    """On a local run with GPU slots (``SGLORA_GPU_SLOTS``), give a step that will use a
    GPU its own device before CUDA starts; the slot is held until the process exits."""
    import os

    from .devices import SLOTS_ENV, acquire_gpu_slot, wants_gpu

    setting = device_setting(args)
    if not os.environ.get(SLOTS_ENV) or setting is None or not wants_gpu(setting):
        return None
    slot = acquire_gpu_slot(os.environ[SLOTS_ENV])
    print(f"sglora {args.command}: GPU slot CUDA_VISIBLE_DEVICES={slot.device}", file=sys.stderr, flush=True)
    return slot


def main(argv: list[str] | None = None) -> int:
    from .io import SGLoraError

    args = build_parser().parse_args(argv)
    try:
        slot = claim_gpu(args)  # noqa: F841 (held, with its lock, until the process exits)
        args.func(args)
    except SGLoraError as err:
        print(f"sglora {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
