"""LoRA on CLIP with ``peft``, and the flat-vector view of a LoRA that SG-LoRA learns on.

A LoRA is represented the paper's way: the layer-wise concatenation of its factors
(``lora_A`` and ``lora_B`` of every target module), not the products BA. A
:class:`Layout` records which slice of the vector is which factor, so any vector turns
back into a PEFT adapter folder that ``PeftModel.from_pretrained`` loads.

Every LoRA of one run starts from the same initialisation (``init_seed``): the experts'
factors then live in one aligned coordinate system, which is what makes averaging them
(the merging baselines) and modelling their distribution (the CVAE) meaningful.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..io import SGLoraError, Settings, atomic_path, reading, save_safetensors, setting

TOWER_PREFIX = {"vision": "vision_model", "text": "text_model"}


@dataclass
class LoraSpec(Settings):
    """Which modules get a LoRA and how it is sized (config section ``lora``)."""

    section: ClassVar[str] = "lora"

    rank: int = setting(2, "LoRA rank r (paper: 2)", min=1)
    alpha: float = setting(4.0, "scaling numerator; the update is (alpha / rank) * B @ A", above=0)
    target_modules: list[str] = setting(factory=lambda: ["q_proj", "k_proj", "v_proj"],
                                        help="attention projections (paper: W_q, W_k, W_v)")
    towers: list[str] = setting(factory=lambda: ["vision", "text"], help="CLIP towers that get LoRA",
                                choices=tuple(TOWER_PREFIX))
    init_seed: int = setting(0, "shared initialisation of every LoRA of a run (aligns factor spaces)")

    def check(self) -> None:
        if not self.target_modules:
            raise SGLoraError("lora.target_modules: expected at least one module name")

    @property
    def scaling(self) -> float:
        """s = alpha / rank, the factor of B @ A in the merged weight."""
        return self.alpha / self.rank

    def regex(self) -> str:
        """The regular expression of the target modules' names in a CLIP model."""
        towers = "|".join(TOWER_PREFIX[t] for t in self.towers)
        mods = "|".join(self.target_modules)
        return rf".*({towers})\.encoder\.layers\.\d+\.self_attn\.({mods})"

    def peft_config(self, base: str = ""):
        """The ``peft`` LoraConfig of this spec (``base``: the backbone's name in the adapter)."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, bias="none",
                          target_modules=self.regex(), base_model_name_or_path=base or None)


@dataclass
class Layout:
    """Where each LoRA factor sits in the flat vector: ``(key, shape, offset)`` rows,
    keys as PEFT saves them (``base_model.model.<module>.lora_A.weight``)."""

    keys: list[str]
    shapes: list[tuple[int, ...]]

    @property
    def sizes(self) -> list[int]:
        """Number of values of each factor."""
        return [int(np.prod(s)) for s in self.shapes]

    @property
    def offsets(self) -> list[int]:
        """Where each factor starts in the flat vector."""
        return [int(x) for x in np.cumsum([0] + self.sizes[:-1])]

    @property
    def dim(self) -> int:
        """Length D of the flat vector."""
        return sum(self.sizes)

    def modules(self) -> list[str]:
        """The target modules (names inside the bare CLIPModel), in order, once each."""
        mods = [k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in self.keys]
        return list(dict.fromkeys(mods))

    def to_json(self) -> str:
        """The layout as JSON (keys, shapes, offsets)."""
        return json.dumps({"keys": self.keys, "shapes": [list(s) for s in self.shapes], "offsets": self.offsets})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Layout":
        """A layout from :meth:`to_json`'s text."""
        d = json.loads(text)
        return cls(list(d["keys"]), [tuple(s) for s in d["shapes"]])

    @classmethod
    def of(cls, peft_model) -> "Layout":
        """The layout of a ``peft`` model's LoRA factors (keys sorted)."""
        from peft import get_peft_model_state_dict

        sd = get_peft_model_state_dict(peft_model)
        keys = sorted(sd)
        return cls(keys, [tuple(sd[k].shape) for k in keys])

    def to_vector(self, state: dict[str, torch.Tensor]) -> np.ndarray:
        """A LoRA state dict as the flat vector; a missing factor is an error."""
        missing = [k for k in self.keys if k not in state]
        if missing:
            raise SGLoraError(f"LoRA state lacks {len(missing)} factor(s) of the layout, e.g. {missing[0]}")
        return torch.cat([state[k].detach().float().reshape(-1).cpu() for k in self.keys]).numpy()

    def to_state(self, vector) -> dict[str, torch.Tensor]:
        """A flat vector as the LoRA state dict; a vector of the wrong length is an error."""
        vec = torch.from_numpy(np.array(vector, dtype=np.float32))
        if vec.ndim != 1 or vec.numel() != self.dim:
            raise SGLoraError(f"LoRA vector has {vec.numel()} values; the layout expects {self.dim}")
        return {k: vec[o : o + n].reshape(s).clone() for k, s, o, n in zip(self.keys, self.shapes, self.offsets, self.sizes)}


def add_lora(model, spec: LoraSpec, base: str = ""):
    """Wrap a CLIPModel with fresh LoRA factors initialised from ``spec.init_seed``."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        peft_model = get_peft_model(model, spec.peft_config(base))
    return peft_model


def save_adapter(out_dir: str | Path, vector, layout: Layout, spec: LoraSpec, base: str,
                 metadata: dict | None = None) -> Path:
    """Write a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)
    from a flat vector, atomically. ``metadata`` (JSON-able) goes into the safetensors
    header under ``sglora``."""
    state = layout.to_state(vector)
    meta = {"format": "pt", "sglora": json.dumps(metadata or {}, sort_keys=True)}
    with atomic_path(out_dir, directory=True) as tmp:
        spec.peft_config(base).save_pretrained(str(tmp))
        save_safetensors(Path(tmp) / "adapter_model.safetensors", state, meta)
    return Path(out_dir)


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The factors and ``sglora`` metadata of an adapter folder (safetensors only)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise SGLoraError(f"{path}: adapter weights not found (only safetensors adapters are read)")
    with reading(path, "adapter weights file (safetensors)"):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        return state, json.loads(meta.get("sglora", "{}"))


def _module(model, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise SGLoraError(f"adapter module {name!r} is not in the backbone") from err


def delta_weights(vector, layout: Layout, scaling: float) -> dict[str, torch.Tensor]:
    """``{module: scaling * B @ A}`` for every target module of the layout."""
    state = layout.to_state(vector)
    out = {}
    for mod in layout.modules():
        a = state[f"base_model.model.{mod}.lora_A.weight"]
        b = state[f"base_model.model.{mod}.lora_B.weight"]
        out[mod] = scaling * (b @ a)
    return out


@contextlib.contextmanager
def merged(model, vector, layout: Layout, scaling: float):
    """Temporarily merge a LoRA vector into a bare CLIPModel's weights (W += s * B @ A),
    so encoding costs exactly what the backbone costs; the weights are restored after."""
    deltas = delta_weights(vector, layout, scaling)
    saved = {}
    with torch.no_grad():
        for mod, delta in deltas.items():
            lin = _module(model, mod)
            if tuple(lin.weight.shape) != tuple(delta.shape):
                raise SGLoraError(
                    f"adapter module {mod}: LoRA update has shape {tuple(delta.shape)}, the backbone weight {tuple(lin.weight.shape)}"
                )
            saved[mod] = lin.weight.detach().clone()
            lin.weight.add_(delta.to(lin.weight.dtype).to(lin.weight.device))
    try:
        yield model
    finally:
        with torch.no_grad():
            for mod, w in saved.items():
                _module(model, mod).weight.copy_(w)

