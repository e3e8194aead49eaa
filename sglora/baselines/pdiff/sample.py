"""Sampling N LoRAs per task from a trained P-diff / COND P-Diff into a candidates file."""

from __future__ import annotations

from pathlib import Path

import torch

from ...io import SGLoraError
from .config import PDiffSpec
from .model import load_pdiff, task_conditions


def sample_pdiff(model_dir: str | Path, repository: str | Path, tasks: list[str], out: str | Path,
                 embeddings: dict | None = None, samples: int | None = None, seed: int | None = None) -> dict:
    """Sample N LoRAs per task (seeded per task) and write a candidates file (method
    ``pdiff`` or ``cond_pdiff``). P-diff needs a model trained on the task; COND P-Diff
    samples any task with a text embedding (the paper evaluates seen tasks)."""
    from ...generator.candidates import save_candidates
    from ...generator.sampling import task_seed
    from ...experts.repository import Repository

    models, cfg = load_pdiff(model_dir)
    repo = Repository(repository)
    if repo.layout.dim != cfg["dim"]:
        raise SGLoraError(f"{model_dir}: models generate {cfg['dim']} values; the repository's layout has {repo.layout.dim}")
    spec = PDiffSpec.from_dict(cfg["pdiff"])
    n = samples or spec.samples
    base_seed = spec.seed if seed is None else seed
    method = cfg["method"]
    conds = task_conditions(tasks, repo.experts(), embeddings) if cfg["conditional"] else {}
    vectors, info = {}, {}
    for t in tasks:
        s = task_seed(base_seed, t)
        gen = torch.Generator().manual_seed(s)
        if cfg["conditional"]:
            vectors[t] = models["cond_pdiff"].sample(n, torch.from_numpy(conds[t]), generator=gen).numpy()
            info[t] = {"seed": s, "seen": t in cfg["tasks"], "guidance": spec.guidance}
        else:
            if t not in models:
                raise SGLoraError(f"{model_dir}: P-diff has no model for task {t!r} (trained: {sorted(models)})")
            vectors[t] = models[t].sample(n, generator=gen).numpy()
            info[t] = {"seed": s, "seen": True}
    save_candidates(out, vectors, repo.layout, method, info, scaling=repo.lora.scaling)
    return {"method": method, "tasks": len(vectors), "samples": n}
