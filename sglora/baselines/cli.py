"""Subcommands of the learned baselines: MoLE (train-mole, evaluate-mole) and P-diff /
COND P-Diff (train-pdiff, sample-pdiff). ``sglora.cli`` calls :func:`register`.

Settings arrive as JSON strings (``--spec '{"epochs": 3}'``), like every other step.
"""

from __future__ import annotations

import argparse
import json

from ..io import comma_list as _list
from ..io import json_object as _json




def _embeddings(path: str | None, dataset: str | None):
    if not path:
        return None
    from ..embed import read_embeddings

    return read_embeddings(path, dataset)


def _mole_device(a) -> str:
    from .mole import MoLESpec

    return MoLESpec.from_dict(_json(a.spec)).device


def _pdiff_device(a) -> str:
    from .pdiff import PDiffSpec

    return PDiffSpec.from_dict(_json(a.spec)).device


# --- handlers ----------------------------------------------------------------------


def cmd_train_mole(a):
    from .mole import MoLESpec, train_mole

    info = train_mole(a.backbone, a.manifest, _list(a.tasks), a.repository, a.out, MoLESpec.from_dict(_json(a.spec)),
                      threads=a.threads, cache=a.image_cache)
    last = info["history"][-1]
    print(json.dumps({"experts": len(info["experts"]), "tasks": len(info["tasks"]), "final": last,
                      "probe_before": info["probe_before"], "probe_after": info["probe_after"]}))


def cmd_evaluate_mole(a):
    from .mole import evaluate_mole

    print(json.dumps(evaluate_mole(a.backbone, a.manifest, _list(a.tasks), a.mole, a.out, group=a.group,
                                   threads=a.threads, device=a.device, cache=a.image_cache, gallery=a.gallery)))


def cmd_train_pdiff(a):
    from .pdiff import PDiffSpec, train_pdiff

    res = train_pdiff(a.repository, _list(a.tasks), a.out, PDiffSpec.from_dict(_json(a.spec)), a.conditional,
                      embeddings=_embeddings(a.embeddings, a.dataset), threads=a.threads)
    print(json.dumps(res))


def cmd_sample_pdiff(a):
    from .pdiff import sample_pdiff

    res = sample_pdiff(a.model, a.repository, _list(a.tasks), a.out, embeddings=_embeddings(a.embeddings, a.dataset),
                       samples=a.samples, seed=a.seed)
    print(json.dumps(res))


# --- parser ------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add the baseline subcommands to ``sglora``'s subparsers."""

    def add(name, func, help_text):
        sp = subparsers.add_parser(name, help=help_text, description=help_text,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    s = add("train-mole", cmd_train_mole,
            "MoLE baseline: train the per-layer gates that mix the repository's expert LoRAs (their mean "
            "snapshots), on the union of the seen tasks' training pairs (contrastive loss + gating-balance "
            "loss; backbone and experts frozen). Writes gates.safetensors, experts.safetensors, config.json.")
    s.add_argument("--backbone", required=True, help="model id or local folder (the repository's backbone)")
    s.add_argument("--manifest", required=True, help="task manifest with the seen tasks' training pairs")
    s.add_argument("--tasks", required=True, help="comma-separated seen task ids to train the gates on")
    s.add_argument("--repository", required=True, help="expert repository folder (the N expert LoRAs)")
    s.add_argument("--spec", help="JSON MoLE spec: epochs, lr, batch_size, temperature, balance_weight, "
                   "pairs_per_task, probe_pairs, seed, device, bf16")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--image-cache", default=None, help="the dataset's image cache (sglora image-cache)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads and DataLoader workers")
    s.set_defaults(device_of=_mole_device)

    s = add("evaluate-mole", cmd_evaluate_mole,
            "MoLE baseline: evaluate the gated model on each task's test split (the gate depends on the "
            "input, so it is not merged into the weights) and write <out>/<task>.json like 'sglora evaluate'.")
    s.add_argument("--backbone", required=True, help="model id or local folder")
    s.add_argument("--manifest", required=True, help="task manifest with the tasks' test pairs")
    s.add_argument("--tasks", required=True, help="comma-separated task ids")
    s.add_argument("--mole", required=True, help="trained MoLE folder (train-mole)")
    s.add_argument("--group", default="", help="evaluation group name written into the JSON")
    s.add_argument("--out", required=True, help="folder for <task>.json")
    s.add_argument("--image-cache", default=None, help="the dataset's image cache (sglora image-cache)")
    s.add_argument("--gallery", type=int, default=0, help="retrieval within galleries of this many test images (0 = whole task)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads and DataLoader workers")
    s.add_argument("--device", default="auto", help='torch device: "auto" = cuda when available, else cpu')
    s.set_defaults(device_of=lambda a: a.device)

    s = add("train-pdiff", cmd_train_pdiff,
            "P-diff / COND P-Diff baselines: train a parameter autoencoder + latent DDPM on the repository's "
            "snapshots; one unconditional model per task (P-diff, --no-conditional) or one model for all tasks "
            "conditioned on their text embeddings (COND P-Diff, --conditional). Seen-task baselines (supp. Table 13).")
    s.add_argument("--repository", required=True, help="expert repository folder (the snapshots)")
    s.add_argument("--embeddings", default=None, help="task embedding table (COND P-Diff conditions; "
                   "defaults to the repository's embeddings)")
    s.add_argument("--dataset", default=None, help="dataset of the tasks (to pick their embeddings)")
    s.add_argument("--tasks", required=True, help="comma-separated seen task ids")
    s.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=False,
                   help="COND P-Diff (one text-conditioned model) instead of P-diff (one model per task)")
    s.add_argument("--spec", help="JSON P-diff spec: autoencoder, latent, channels, kernel_size, ae_hidden, "
                   "input_noise, latent_noise, ae_epochs, ae_lr, denoiser_hidden, denoiser_blocks, time_dim, "
                   "diffusion_epochs, lr, batch_size, T, beta_start, beta_end, cfg_dropout, guidance, samples, seed, device")
    s.add_argument("--out", required=True, help="output folder (<model>.safetensors, config.json)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads")
    s.set_defaults(device_of=_pdiff_device)

    s = add("sample-pdiff", cmd_sample_pdiff,
            "P-diff / COND P-Diff baselines: sample N LoRAs per task (seeded per task) from a trained model and "
            "write a candidates file (method pdiff or cond_pdiff) for 'sglora evaluate'.")
    s.add_argument("--model", required=True, help="trained P-diff folder (train-pdiff)")
    s.add_argument("--repository", required=True, help="expert repository (the LoRA layout)")
    s.add_argument("--embeddings", default=None, help="task embedding table (COND P-Diff conditions)")
    s.add_argument("--dataset", default=None, help="dataset of the tasks (to pick their embeddings)")
    s.add_argument("--tasks", required=True, help="comma-separated task ids")
    s.add_argument("--samples", type=int, default=None, help="N samples per task (default: the spec's samples)")
    s.add_argument("--seed", type=int, default=None, help="sampling seed (default: the spec's seed)")
    s.add_argument("--out", required=True, help="candidates file (.safetensors)")
