"""Candidate LoRAs: what a method proposes for each task, as factor vectors.

One safetensors file per (group, method): tensor ``<task>`` is an ``n x D`` matrix (n = 1
for deterministic methods, N samples for generative ones); the metadata holds the layout
and, per task, what the method used (experts, alpha, seeds). Evaluation reads these, so
every method is evaluated by the same code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io import SGLoraError, reading, save_safetensors
from .lora import Layout


def save_candidates(path: str | Path, vectors: dict[str, np.ndarray], layout: Layout, method: str,
                    info: dict[str, dict] | None = None) -> None:
    tensors = {t: np.ascontiguousarray(np.atleast_2d(v).astype(np.float32)) for t, v in sorted(vectors.items())}
    for t, v in tensors.items():
        if v.shape[1] != layout.dim:
            raise SGLoraError(f"{path}: candidates for {t!r} have {v.shape[1]} values; the layout expects {layout.dim}")
    meta = {"method": method, "layout": layout.to_json(), "info": json.dumps(info or {}, sort_keys=True)}
    save_safetensors(path, tensors, meta)


def load_candidates(path: str | Path) -> tuple[dict[str, np.ndarray], Layout, dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise SGLoraError(f"{path}: candidates not found")
    with reading(path, "candidates file (safetensors written by 'sglora candidates')"):
        with safe_open(str(path), "np") as f:
            meta = f.metadata()
            vectors = {k: f.get_tensor(k) for k in f.keys()}
        layout, info = Layout.from_json(meta["layout"]), {"method": meta["method"], "info": json.loads(meta["info"])}
        for t, v in vectors.items():
            if v.ndim != 2 or v.shape[1] != layout.dim:
                raise ValueError(f"tensor {t!r} has shape {v.shape}; the layout expects n x {layout.dim}")
    return vectors, layout, info
