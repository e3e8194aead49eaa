"""A trained MoLE on disk (gate weights, expert vectors, config) and the backbone with
its gated modules in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...io import SGLoraError, atomic_path, save_safetensors, write_json
from ...experts.lora import Layout
from .layer import MoLELinear, attach_mole, gate_state, load_gate_state


def save_mole(out_dir: str | Path, modules: dict[str, MoLELinear], vectors: np.ndarray, layout: Layout,
              info: dict) -> Path:
    """Write a trained MoLE folder: gates.safetensors, experts.safetensors, config.json."""
    with atomic_path(out_dir, directory=True) as tmp:
        save_safetensors(tmp / "gates.safetensors", gate_state(modules))
        save_safetensors(tmp / "experts.safetensors", {"experts": np.asarray(vectors, dtype=np.float32)},
                         {"layout": layout.to_json(), "experts": json.dumps(info["experts"])})
        write_json(tmp / "config.json", info)
    return Path(out_dir)


def load_mole(mole_dir: str | Path) -> tuple[dict[str, torch.Tensor], np.ndarray, Layout, dict]:
    """``(gate state, expert vectors N x D, layout, config)`` of a trained MoLE folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    mole_dir = Path(mole_dir)
    paths = [mole_dir / n for n in ("config.json", "gates.safetensors", "experts.safetensors")]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise SGLoraError(f"{mole_dir}: not a trained MoLE (missing {missing})")
    cfg = json.loads(paths[0].read_text())
    with safe_open(str(paths[2]), "np") as f:
        vectors, layout = f.get_tensor("experts"), Layout.from_json(f.metadata()["layout"])
    return load_file(str(paths[1])), vectors, layout, cfg


def mole_model(backbone: str, mole_dir: str | Path, device: str = "cpu"):
    """``(model, processor, modules, config)``: the backbone with the trained gated modules."""
    from ...backbone.clip import load_clip

    state, vectors, layout, cfg = load_mole(mole_dir)
    model, processor = load_clip(backbone, device="cpu")
    model.requires_grad_(False)
    modules = attach_mole(model, vectors, layout, cfg["scaling"], cfg["mole"]["temperature"])
    load_gate_state(modules, state, str(Path(mole_dir) / "gates.safetensors"))
    return model.to(device).eval(), processor, modules, cfg
