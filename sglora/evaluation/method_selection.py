"""Choosing every method's settings on validation tasks, never on test tasks.

A config's ``validation`` names unseen tasks that are disjoint from the experts and from
every evaluation group; its ``selection`` lists, per method, a small grid of that method's
own settings. ``select_settings`` scores every grid point on the validation tasks (the
mean of I2T and T2I R@1, or accuracy, averaged over tasks and samples) and keeps the best
(ties: the first in grid order). Each test group is then evaluated once, with the chosen
settings, which every table footnotes. Nothing here reads a test task: the candidates and
the metrics are computed for ``tasks`` (the validation tasks) only.

Settings a method can vary:

- ``sglora``: ``condition`` (the CVAE's training condition), ``k`` and ``tau`` (the
  semantic prior), ``augment`` and ``describe`` (generator variants, sglora/generator/cvae.py); a
  CVAE is trained per combination of these five; ``temperature`` and ``average``
  (sampling only);
- ``topk_weighted``: ``k``, ``tau``; ``adaptersoup``: ``k``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io import SGLoraError
from ..methods import METHODS
from ..generator.grid import grid_points
from ..generator.settings import CVAE_VARIANT_OFF

#: method -> the settings a selection grid may vary (from the method registry)
SETTINGS = {m.id: m.settings for m in METHODS.values() if m.settings}


def check_grid(grid: dict[str, dict[str, list]], where: str = "selection") -> None:
    """Refuse a method or a setting a grid cannot vary, naming the key."""
    for method, axes in (grid or {}).items():
        if method not in SETTINGS:
            raise SGLoraError(f"{where}.{method}: no selectable settings; methods with settings: {sorted(SETTINGS)}")
        for key, values in axes.items():
            if key not in SETTINGS[method]:
                raise SGLoraError(f"{where}.{method}.{key}: not a setting of {method}; known: {list(SETTINGS[method])}")
            if not isinstance(values, list) or not values:
                raise SGLoraError(f"{where}.{method}.{key}: expected a non-empty list of values")


def apply_settings(settings: dict, prior, sampling):
    """The prior and sampling specs with a method's chosen settings applied."""
    prior = replace(prior, **{k: settings[k] for k in ("k", "tau") if k in settings})
    if "temperature" in settings:
        sampling = replace(sampling, temperature=float(settings["temperature"]))
    if "average" in settings:
        sampling = replace(sampling, average=bool(settings["average"]))
    return prior, sampling


class TrainedCVAEs:
    """The trained CVAE folders of a run (every variant and run), read lazily: configs
    first, a model only when a chosen variant needs it (a paper-size CVAE is ~0.5 GB)."""

    def __init__(self, dirs: list[str | Path]):
        import json

        self.configs = {}
        for d in dirs:
            cfg_path = Path(d) / "config.json"
            if not cfg_path.exists():
                raise SGLoraError(f"{d}: not a trained CVAE (no config.json)")
            self.configs[str(d)] = json.loads(cfg_path.read_text())
        self._models = {}

    def default_condition(self) -> str:
        """The training condition of the CVAEs (their first config's)."""
        return next(iter(self.configs.values()))["cvae"]["condition"]

    def default_variant(self) -> dict:
        """The variant settings of the first CVAE (what candidates use without a selection)."""
        cvae = next(iter(self.configs.values()))["cvae"]
        return {key: cvae.get(key, off) for key, off in CVAE_VARIANT_OFF.items()}

    def variant(self, condition: str, k: int, tau: float, modality: str | None = None,
                **variant) -> list[tuple[int, str]]:
        """``(seed, folder)`` of the trainings of one variant, by seed (any modality if None);
        ``variant``: augment, describe (absent: off)."""
        want = {key: variant.get(key, off) for key, off in CVAE_VARIANT_OFF.items()}
        return sorted(
            (cfg["cvae"]["seed"], d) for d, cfg in self.configs.items()
            if cfg["cvae"]["condition"] == condition and cfg["prior"]["k"] == k
            and abs(cfg["prior"]["tau"] - tau) < 1e-12 and modality in (None, cfg["prior"]["modality"])
            and all(cfg["cvae"].get(key, off) == want[key] for key, off in CVAE_VARIANT_OFF.items()))

    def pick(self, condition: str, prior, runs: int, where: str = "", **variant) -> list:
        """The models of one variant, ordered by training seed; exactly ``runs`` must exist."""
        from ..generator.cvae import load_cvae

        found = self.variant(condition, prior.k, prior.tau, prior.modality, **variant)
        if len(found) != runs:
            extra = "".join(f", {key}={value}" for key, value in variant.items())
            raise SGLoraError(f"{where}: {len(found)} trained CVAE(s) for condition={condition}, k={prior.k}, "
                              f"tau={prior.tau}, modality={prior.modality}{extra}; sampling.runs needs {runs}")
        for _, d in found:
            if d not in self._models:
                self._models[d] = load_cvae(d)[0]
        return [self._models[d] for _, d in found]


def method_candidates(method: str, settings: dict, tasks: list[str], experts, embeddings: dict[str, dict], prior,
                      sampling, cvaes: TrainedCVAEs | None = None, seen: bool = False):
    """Candidates of a merging method or SG-LoRA with ``settings`` applied."""
    from ..generator.candidates import merging_candidates, sglora_candidates

    prior, sampling = apply_settings(settings, prior, sampling)
    if method == "sglora":
        if cvaes is None:
            raise SGLoraError("sglora candidates need trained CVAEs")
        condition = settings.get("condition", cvaes.default_condition())
        variant = {key: settings.get(key, default) for key, default in cvaes.default_variant().items()}
        models = cvaes.pick(condition, prior, sampling.runs, where="sglora", **variant)
        return sglora_candidates(models, tasks, experts, embeddings, prior, sampling, seen=seen)
    return merging_candidates(method, tasks, experts, embeddings, prior, seen=seen)


def primary_score(metrics: dict[str, float]) -> float:
    """The selection criterion of one evaluation: accuracy, or the mean of I2T and T2I R@1."""
    if "accuracy" in metrics:
        return metrics["accuracy"]
    return 0.5 * (metrics["i2t_r1"] + metrics["t2i_r1"])


def select_settings(backbone: str, manifest: str | Path, tasks: list[str], grid: dict[str, dict[str, list]],
                    experts, embeddings: dict[str, dict], prior, sampling, scaling: float, layout,
                    cvaes: TrainedCVAEs | None = None, threads: int | None = None, progress: bool = True,
                    device: str = "auto", cache: str | Path | None = None, gallery: int = 0) -> dict:
    """Score every grid point of every method on the validation ``tasks`` and choose.

    Returns ``{"chosen": {method: settings}, "scores": {method: [{"settings", "score",
    "per_task"}]}, "tasks": tasks, "criterion": ...}``."""
    import torch
    from tqdm import tqdm

    from ..backbone.clip import load_clip
    from ..devices import pick_device
    from .scoring import evaluate_vectors, load_task

    check_grid(grid)
    if not tasks:
        raise SGLoraError("selection: the validation task list is empty")
    if threads:
        torch.set_num_threads(threads)
    model, processor = load_clip(backbone, device=pick_device(device))
    data = {t: load_task(manifest, t, processor, cache=cache, workers=threads or 0, gallery=gallery) for t in tasks}
    chosen, scores = {}, {}
    for method, axes in sorted(grid.items()):
        points = grid_points(axes)
        rows = []
        for settings in tqdm(points, desc=f"select[{method}]", disable=not progress):
            vecs, _ = method_candidates(method, settings, tasks, experts, embeddings, prior, sampling, cvaes)
            per_task = {}
            for t in tasks:
                per = evaluate_vectors(model, processor, data[t], vecs[t], layout, scaling)
                per_task[t] = float(np.mean([primary_score(m) for m in per]))
            rows.append({"settings": settings, "score": float(np.mean(list(per_task.values()))), "per_task": per_task})
        best = max(range(len(rows)), key=lambda i: (rows[i]["score"], -i))
        chosen[method] = rows[best]["settings"]
        scores[method] = rows
    return {"chosen": chosen, "scores": scores, "tasks": list(tasks),
            "criterion": "mean over validation tasks and samples of accuracy, or of (I2T R@1 + T2I R@1) / 2"}


def chosen_settings(path: str | Path | None, method: str) -> dict:
    """A method's settings chosen on the validation tasks (``{}`` without a selection file)."""
    from ..io import read_json

    return read_json(path).get("chosen", {}).get(method, {}) if path else {}


def export_chosen(cvae_dirs: list[str | Path], selection: dict, out: str | Path) -> dict:
    """Copy run 0 of SG-LoRA's chosen CVAE variant to ``out``, with the chosen sampling
    temperature recorded in its ``config.json`` (``sampling.temperature``, and
    ``sampling.average`` when chosen)."""
    import json
    import shutil

    from ..io import atomic_path

    chosen = selection.get("chosen", {}).get("sglora", {})
    if not chosen:
        raise SGLoraError("selection: no settings chosen for sglora")
    store = TrainedCVAEs(cvae_dirs)
    match = store.variant(chosen["condition"], chosen["k"], chosen["tau"],
                          **{key: chosen[key] for key in CVAE_VARIANT_OFF if key in chosen})
    if not match:
        raise SGLoraError(f"selection: no trained CVAE for the chosen settings {chosen}")
    src = Path(match[0][1])
    with atomic_path(out, directory=True) as tmp:
        shutil.copyfile(src / "model.safetensors", tmp / "model.safetensors")
        sampling = {"temperature": float(chosen.get("temperature", 1.0))}
        if chosen.get("average"):
            sampling["average"] = True
        cfg = store.configs[str(src)] | {"sampling": sampling, "selected": chosen}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return {"source": str(src), "chosen": chosen}


def merge_selections(parts: list[dict]) -> dict:
    """One ``selection.json`` from the per-method files: chosen settings and scores of
    every method (their validation tasks must agree)."""
    out = {"chosen": {}, "scores": {}, "tasks": None, "criterion": None}
    for part in parts:
        if out["tasks"] is not None and part["tasks"] != out["tasks"]:
            raise SGLoraError(f"selection: files were made on different validation tasks ({part['tasks']} vs {out['tasks']})")
        out["tasks"], out["criterion"] = part["tasks"], part["criterion"]
        out["dataset"] = part.get("dataset")
        out["chosen"].update(part["chosen"])
        out["scores"].update(part["scores"])
    return out
