"""Subcommands of issue #15, "what the generator adds": the generator baselines
(``generator-candidates``: prior sampling, noisy nearest expert), the comparison of LoRA
spaces (``spaces-select``, ``spaces-evaluate``) and the novelty of generated LoRAs
(``novelty``). ``sglora.cli`` calls :func:`register`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .io import SGLoraError
from .io import comma_list as _list
from .io import json_object as _json


def _chosen(path, method):
    if not path:
        return {}
    from .io import read_json

    return read_json(path).get("chosen", {}).get(method, {})


def cmd_generator_candidates(a):
    from .candidates import load_candidates, save_candidates
    from .embed import read_embeddings
    from .generate import PriorSpec, SamplingSpec
    from .generators import NoisySpec, generator_candidates
    from .repository import Repository
    from .selection import apply_settings

    repo = Repository(a.repository)
    chosen = _chosen(a.selection, "sglora")  # SG-LoRA's prior, chosen on the validation tasks
    prior, sampling = apply_settings(chosen, PriorSpec.from_dict(_json(a.prior, "--prior")),
                                     SamplingSpec.from_dict(_json(a.sampling, "--sampling")))
    sg = sg_info = None
    if a.sglora:
        sg, layout, meta = load_candidates(a.sglora)
        sg_info = meta["info"]
        if layout.dim != repo.layout.dim:
            raise SGLoraError(f"{a.sglora}: SG-LoRA's candidates are not in the repository's layout")
    vecs, info = generator_candidates(a.method, _list(a.tasks), repo.experts(), read_embeddings(a.embeddings, a.dataset),
                                      prior, sampling, sg, sg_info, NoisySpec.from_dict(_json(a.spec, "--spec")), seen=a.seen)
    for t in info:
        info[t]["settings"] = {k: chosen[k] for k in ("k", "tau") if k in chosen}
    save_candidates(a.out, vecs, repo.layout, a.method, info)
    print(json.dumps({"method": a.method, "tasks": len(vecs), "samples": len(next(iter(vecs.values())))}))


def cmd_spaces_select(a):
    from .embed import read_embeddings
    from .generate import PriorSpec
    from .io import write_json
    from .repository import Repository
    from .space_compare import select_spaces

    repo = Repository(a.repository)
    spec = _json(a.spaces, "--spaces")
    res = select_spaces(a.backbone, a.manifest, _list(a.tasks), spec.get("methods", []), spec.get("compare", []),
                        _json(a.grid, "--grid"), repo.experts(), repo.layout, read_embeddings(a.embeddings, a.dataset),
                        PriorSpec.from_dict(_json(a.prior, "--prior")), repo.lora.scaling, threads=a.threads,
                        device=a.device, cache=a.image_cache, gallery=a.gallery)
    res["dataset"] = a.dataset
    write_json(a.out, res)
    print(json.dumps(res["chosen"]))


def cmd_spaces_evaluate(a):
    from .embed import read_embeddings
    from .generate import PriorSpec
    from .io import atomic_path, read_json
    from .repository import Repository
    from .space_compare import evaluate_spaces, write_space_table

    repo = Repository(a.repository)
    sel, tasks = read_json(a.selection), _list(a.tasks)
    with atomic_path(a.out, directory=True) as tmp:
        evaluate_spaces(a.backbone, a.manifest, tasks, sel, repo.experts(), repo.layout,
                        read_embeddings(a.embeddings, a.dataset), PriorSpec.from_dict(_json(a.prior, "--prior")),
                        repo.lora.scaling, tmp, group=a.group, seen=a.seen, threads=a.threads, device=a.device,
                        cache=a.image_cache, gallery=a.gallery)
    write_space_table(Path(a.out) / "metrics", sel, tasks, a.title or a.group, a.markdown, a.csv, n_boot=a.bootstrap)
    print(Path(a.markdown).read_text())


def cmd_novelty(a):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .embed import read_embeddings
    from .figures import _save
    from .io import atomic_path, write_json
    from .novelty import novelty_of_group, render_novelty
    from .tables import NAMES

    cands = dict(x.split("=", 1) for x in a.candidates)
    mets = dict(x.split("=", 1) for x in a.metrics)
    res = novelty_of_group(a.backbone, a.manifest, _list(a.tasks), a.repository, a.cvae, cands, mets,
                           read_embeddings(a.embeddings, a.dataset), modality=_json(a.prior, "--prior").get("modality", "textual"),
                           seen=a.seen, threads=a.threads, device=a.device, cache=a.image_cache, gallery=a.gallery,
                           n_boot=a.bootstrap)
    title = a.title or a.group
    write_json(a.out, res)
    with atomic_path(a.markdown) as tmp:
        tmp.write_text(render_novelty(res, title, NAMES))
    from .novelty import novelty_figure

    fig = novelty_figure(res, title, NAMES)
    out = Path(a.figure)
    _save(fig, out.parent, out.stem)
    plt.close(fig)
    print(render_novelty(res, title, NAMES))


def cmd_select_training(a):
    from .expert import TrainSpec
    from .io import write_json
    from .lora import LoraSpec
    from .trainer_selection import select_training

    res = select_training(a.backbone, a.manifest, _list(a.tasks), LoraSpec.from_dict(_json(a.lora, "--lora")),
                          TrainSpec.from_dict(_json(a.training, "--training")), _json(a.grid, "--grid"),
                          threads=a.threads, device=a.device, cache=a.image_cache, gallery=a.gallery)
    write_json(a.out, res)
    print(json.dumps(res["chosen"]))


def cmd_compare_runs(a):
    from .io import atomic_path, read_json
    from .space_compare import runs_table

    runs = dict(x.split("=", 1) for x in a.runs)
    sels = {k: read_json(v).get("chosen", {}) for k, v in (x.split("=", 1) for x in a.selections)}
    text = runs_table(runs, a.group, _list(a.methods), _list(a.tasks), a.title or a.group, sels, a.reference,
                      a.bootstrap)["md"]
    with atomic_path(a.out) as tmp:
        tmp.write_text(text)
    print(text)


def register(subparsers) -> None:
    """Add this module's subcommands to ``sglora``'s subparsers."""

    def add(name, func, help_text):
        sp = subparsers.add_parser(name, help=help_text, description=help_text,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    def common(s, tasks=True):
        s.add_argument("--repository", required=True, help="expert repository folder")
        s.add_argument("--embeddings", required=True, help="task embedding table")
        s.add_argument("--dataset", default=None, help="dataset of the tasks (to pick their embeddings)")
        if tasks:
            s.add_argument("--tasks", required=True, help="comma-separated task ids")
        s.add_argument("--prior", help="JSON prior spec (k, tau, modality)")

    def evaluation(s):
        s.add_argument("--backbone", required=True)
        s.add_argument("--manifest", required=True, help="task manifest of the tasks' dataset")
        s.add_argument("--image-cache", default=None, help="the dataset's image cache (sglora image-cache)")
        s.add_argument("--gallery", type=int, default=0, help="retrieval within galleries of this many test images")
        s.add_argument("--threads", type=int, default=None)
        s.add_argument("--device", default="auto", help='torch device: "auto" = cuda when available, else cpu')
        s.set_defaults(device_of=lambda a: a.device)

    s = add("generator-candidates", cmd_generator_candidates,
            "Generator baselines: N draws from the semantic prior N(mu*, sigma*^2) (prior_sampling), or the "
            "description-nearest expert plus Gaussian noise of SG-LoRA's spread (noisy_expert); as many samples and "
            "runs as SG-LoRA. Writes a candidates file for 'sglora evaluate'.")
    s.add_argument("--method", required=True, choices=["prior_sampling", "noisy_expert"])
    common(s)
    s.add_argument("--seen", action="store_true", help="seen tasks: leave the task's own expert out")
    s.add_argument("--selection", default=None, help="SG-LoRA's selection file (its chosen k, tau)")
    s.add_argument("--sampling", help="JSON sampling spec (samples, runs, seed)")
    s.add_argument("--sglora", default=None, help="SG-LoRA's candidates of the same tasks (noisy_expert's spread)")
    s.add_argument("--spec", help='JSON noisy_expert spec ({"spread": "diagonal"|"isotropic"})')
    s.add_argument("--out", required=True, help="candidates file (.safetensors)")

    s = add("spaces-select", cmd_spaces_select,
            "LoRA spaces: choose each merging method's settings within each space (factors, product, product_svd) "
            "on the validation tasks.")
    common(s)
    evaluation(s)
    s.add_argument("--spaces", required=True, help='JSON {"compare": [spaces], "methods": [merging methods]}')
    s.add_argument("--grid", help="JSON selection grids (the merging methods' k, tau axes)")
    s.add_argument("--out", required=True, help="spaces selection JSON")

    s = add("spaces-evaluate", cmd_spaces_evaluate,
            "LoRA spaces: every (merging method, space) with its validation-chosen settings on a group's test tasks; "
            "writes candidates/ and metrics/ into --out and the table of spaces.")
    common(s)
    evaluation(s)
    s.add_argument("--selection", required=True, help="spaces selection JSON (spaces-select)")
    s.add_argument("--group", default="")
    s.add_argument("--title", default="")
    s.add_argument("--seen", action="store_true")
    s.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates of the 95%% intervals")
    s.add_argument("--out", required=True, help="output folder (candidates/, metrics/)")
    s.add_argument("--markdown", required=True, help="the table of spaces (Markdown)")
    s.add_argument("--csv", required=True, help="the table of spaces (CSV)")

    s = add("novelty", cmd_novelty,
            "Novelty of a group's generated LoRAs: distance to the nearest training snapshot (CVAE-normalised and "
            "ΔW space) against the repository's within- and between-expert distances, and agreement of retrieval "
            "ranks with the nearest snapshot's (evaluated here on the same test queries).")
    common(s)
    evaluation(s)
    s.add_argument("--cvae", required=True, help="trained CVAE folder (its normalisation defines the normalised space)")
    s.add_argument("--candidates", nargs="+", required=True, metavar="METHOD=FILE")
    s.add_argument("--metrics", nargs="+", required=True, metavar="METHOD=DIR")
    s.add_argument("--seen", action="store_true")
    s.add_argument("--group", default="")
    s.add_argument("--title", default="")
    s.add_argument("--bootstrap", type=int, default=2000)
    s.add_argument("--out", required=True, help="novelty JSON")
    s.add_argument("--markdown", required=True, help="novelty table (Markdown)")
    s.add_argument("--figure", required=True, help="figure (.png; a .pdf beside it)")

    s = add("select-training", cmd_select_training,
            "Choose the LoRA trainer's settings (e.g. the lr of the frozen_a space) on the validation tasks: one LoRA "
            "per grid point and task, trained on the task's own pairs, its final snapshot scored on its test split.")
    s.add_argument("--tasks", required=True, help="comma-separated validation task ids")
    s.add_argument("--grid", required=True, help='JSON grid, e.g. {"lr": [0.003, 0.01, 0.03]}')
    s.add_argument("--lora", help="JSON LoRA spec")
    s.add_argument("--training", help="JSON training spec (the settings the grid does not vary)")
    evaluation(s)
    s.add_argument("--out", required=True, help="selection JSON")

    s = add("compare-runs", cmd_compare_runs,
            "Two runs of one world in different LoRA spaces (e.g. the default factors run and a frozen_a run): every "
            "method of a group in each, with paired differences to the reference run.")
    s.add_argument("--runs", nargs="+", required=True, metavar="SPACE=METRICS_ROOT")
    s.add_argument("--selections", nargs="*", default=[], metavar="SPACE=SELECTION_JSON")
    s.add_argument("--reference", default="factors")
    s.add_argument("--group", required=True)
    s.add_argument("--methods", required=True, help="comma-separated methods")
    s.add_argument("--tasks", required=True)
    s.add_argument("--title", default="")
    s.add_argument("--bootstrap", type=int, default=2000)
    s.add_argument("--out", required=True, help="table (Markdown)")
