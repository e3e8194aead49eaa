"""Evaluating a trained MoLE with its gates in place (a MoLE is not mergeable)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...devices import pick_device
from ...io import write_json
from .model import mole_model


def evaluate_mole(backbone: str, manifest: str | Path, tasks: list[str], mole_dir: str | Path, out_dir: str | Path,
                  group: str = "", threads: int | None = None, device: str = "auto",
                  cache: str | Path | None = None, gallery: int = 0) -> dict:
    """Write ``out_dir/<task>.json`` for each task, as :func:`sglora.evaluation.scoring.evaluate_method`
    does (method ``mole``, n = 1), with the gated modules in place (a MoLE is not mergeable).
    ``info`` holds the experts and the mean gate of each over the task's image tokens.
    ``device``: "auto" = CUDA when available; ``cache``: the dataset's image cache."""
    from tqdm import tqdm

    from ...evaluation.scoring import load_task, score_queries, summarize

    if threads:
        torch.set_num_threads(threads)
    model, processor, modules, cfg = mole_model(backbone, mole_dir, pick_device(device))
    vision = [m for n, m in modules.items() if n.startswith("vision_model.")]
    results = {}
    for task in tqdm(tasks, desc=f"evaluate[{group}/mole]"):
        data = load_task(manifest, task, processor, cache=cache, workers=threads or 0, gallery=gallery)
        for m in vision:
            m.record, m.gate_sum, m.gate_count = True, torch.zeros(m.n, dtype=torch.float64), 0.0
        try:
            queries = score_queries(model, processor, data)
        finally:
            for m in vision:
                m.record = False
        info = {"experts": cfg["experts"], "trained_on": cfg["tasks"], "kind": "gated mixture of expert LoRAs (not merged)"}
        if vision:
            gate = sum(m.gate_sum for m in vision) / max(sum(m.gate_count for m in vision), 1.0)
            info["mean_gate_image"] = dict(zip(cfg["experts"], [round(float(x), 6) for x in gate]))
        res = {"method": "mole", "group": group, "task": task, "kind": data.kind, **summarize([queries]), "info": info}
        write_json(Path(out_dir) / f"{task}.json", res, flat_int_lists=True)
        results[task] = res["mean"]
    return results
