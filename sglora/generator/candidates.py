"""Candidate LoRAs: what a method proposes for each task, as factor vectors.

One safetensors file per (group, method): tensor ``<task>`` is an ``n x D`` matrix (n = 1
for deterministic methods, N samples for generative ones); the metadata holds the layout
and, per task, what the method used (experts, alpha, seeds). Evaluation reads these, so
every method is evaluated by the same code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import SGLoraError, reading, save_safetensors
from ..experts.lora import Layout


def save_candidates(path: str | Path, vectors: dict[str, np.ndarray], layout: Layout, method: str,
                    info: dict[str, dict] | None = None, bound: float | None = None,
                    scaling: float | None = None) -> None:
    """``bound``: the largest norm a LoRA of the repository the candidates come from can have
    (``ExpertTable.norm_bound``); recorded, so that evaluation refuses a candidate beyond it.
    ``scaling``: the LoRA scaling (alpha / rank of the LoRAs the candidates come from) the
    candidates are applied with; recorded, so that evaluation uses it and refuses another."""
    tensors = {t: np.ascontiguousarray(np.atleast_2d(v).astype(np.float32)) for t, v in sorted(vectors.items())}
    for t, v in tensors.items():
        if v.shape[1] != layout.dim:
            raise SGLoraError(f"{path}: candidates for {t!r} have {v.shape[1]} values; the layout expects {layout.dim}")
    meta = {"method": method, "layout": layout.to_json(), "info": json.dumps(info or {}, sort_keys=True)}
    if bound is not None:
        meta["norm_bound"] = repr(float(bound))
    if scaling is not None:
        meta["scaling"] = repr(float(scaling))
    save_safetensors(path, tensors, meta)


def load_candidates(path: str | Path) -> tuple[dict[str, np.ndarray], Layout, dict]:
    """Read a candidates file: ``({task: n x D}, layout, metadata)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise SGLoraError(f"{path}: candidates not found")
    with reading(path, "candidates file (safetensors written by 'sglora candidates')"):
        with safe_open(str(path), "np") as f:
            meta = f.metadata()
            vectors = {k: f.get_tensor(k) for k in f.keys()}
        layout, info = Layout.from_json(meta["layout"]), {"method": meta["method"], "info": json.loads(meta["info"])}
        for key in ("norm_bound", "scaling"):
            if key in meta:
                info[key] = float(meta[key])
        for t, v in vectors.items():
            if v.ndim != 2 or v.shape[1] != layout.dim:
                raise ValueError(f"tensor {t!r} has shape {v.shape}; the layout expects n x {layout.dim}")
    return vectors, layout, info


def merging_candidates(method: str, tasks: list[str], experts, embeddings: dict[str, dict], prior,
                       seen: bool = False) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Model Soups / AdapterSoup / Top-K LoRA Weighted for each task: ``({task: 1 x D}, info)``.

    ``prior`` is a ``PriorSpec`` (k, tau, modality). With ``seen`` the task is one of the
    experts and is left out of its own merge (it would otherwise be its own answer)."""
    from ..baselines.merging import merge

    vecs, info = {}, {}
    key = "text_embedding" if prior.modality == "textual" else "visual_embedding"
    for t in tasks:
        v, i = merge(method, experts, _embedding(embeddings, t)[key], prior.modality, prior.k, prior.tau,
                     exclude_task=t if seen else None)
        vecs[t], info[t] = v[None], i
    return vecs, info


def sglora_candidates(cvaes: list, tasks: list[str], experts, embeddings: dict[str, dict], prior, sampling,
                      seen: bool = False) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """SG-LoRA samples for each task: ``sampling.samples`` from each trained CVAE of
    ``cvaes`` (one per run, i.e. per training seed), stacked: ``({task: (runs x samples) x D}, info)``.

    ``info[task]["runs"]`` labels every sample with its run, so intervals can resample runs.
    With ``seen`` the condition of a task is built exactly as in the CVAE's training. With
    ``sampling.average`` each run gives one candidate, the mean of its N decoded samples."""
    from .sampling import describe_prior, sample_loras, task_seed

    key = "text_embedding" if prior.modality == "textual" else "visual_embedding"
    vecs, info = {}, {}
    for t in tasks:
        parts, runs = [], []
        for r, cvae in enumerate(cvaes):
            s = task_seed(sampling.seed + r, t)
            v, p = sample_loras(cvae, experts, _embedding(embeddings, t)[key], prior, sampling.samples, s,
                                seen_task=t if seen else None, temperature=sampling.temperature)
            if sampling.average:
                v = v.astype(np.float64).mean(0, keepdims=True).astype(np.float32)
            parts.append(v)
            runs += [r] * len(v)
            if r == 0:
                info[t] = {"experts": describe_prior(p, experts), "seeds": [], "temperature": sampling.temperature,
                           "condition": cvae.spec.condition}
                if sampling.average:
                    info[t]["average"] = sampling.samples
            info[t]["seeds"].append(s)
        vecs[t] = np.concatenate(parts)
        info[t]["runs"] = runs
    return vecs, info


def _embedding(embeddings: dict[str, dict], task: str) -> dict:
    if task not in embeddings:
        raise SGLoraError(f"no task embedding for {task!r} (is it in the task embedding table's dataset?)")
    return embeddings[task]


def oracle_candidates(loras: list[str | Path]) -> tuple[dict[str, np.ndarray], Layout, dict, float | None]:
    """The Oracle's candidate of each task: the final snapshot of the LoRA trained on the
    task's own data (folder name = task id); all folders must share one scaling."""
    from ..experts.training import read_lora_spec, read_snapshots

    vecs, layout = {}, None
    scalings = {read_lora_spec(d).scaling for d in loras}
    if len(scalings) > 1:
        raise SGLoraError(f"oracle: the LoRA folders were trained with different scalings {sorted(scalings)}")
    for d in loras:
        snaps, layout = read_snapshots(d)
        vecs[Path(d).name] = snaps[-1:]
    info = {t: {"kind": "trained on the task's own data"} for t in vecs}
    return vecs, layout, info, scalings.pop() if scalings else None


def save_sample_adapters(folder: str | Path, vecs: dict[str, np.ndarray], info: dict, repo, embeddings: dict) -> None:
    """Write every SG-LoRA sample as a PEFT adapter, ``<folder>/<task>/sample_NNN``, with the
    task's description, seed, run and experts in its metadata."""
    from ..experts.lora import save_adapter

    for t, v in vecs.items():
        for i, vec in enumerate(v):
            save_adapter(Path(folder) / t / f"sample_{i:03d}", vec, repo.layout, repo.lora, repo.backbone,
                         {"task": t, "description": embeddings[t]["description"], "seed": info[t]["seeds"][info[t]["runs"][i]],
                          "run": info[t]["runs"][i], "sample": i, "experts": info[t]["experts"], "kind": "sglora"})
    Path(folder).mkdir(parents=True, exist_ok=True)
