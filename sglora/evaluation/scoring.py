"""Evaluating LoRAs on a task's test split: the LoRA is merged into the backbone's weights
(W += s * B @ A) before encoding, so a LoRA costs nothing at inference.

Retrieval tasks (one class per task) give I2T / T2I Recall@1/5/10 within the task's test
pairs; classification tasks (several fine classes per task, CIFAR-100 superclasses) give
accuracy with the prompts "a photo of a <class>" as the classifier. Each ``<task>.json``
also keeps the per-query results (ranks, or correct / wrong per image) of every sample and
the run (e.g. CVAE seed) it came from, for the bootstrap intervals of ``sglora.evaluation.stats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbone.clip import encode_images, encode_texts, load_clip, text_batches
from ..devices import pick_device
from ..data.images import Batches, task_batches
from ..io import SGLoraError, write_json
from ..experts.lora import Layout, merged
from ..data.manifest import read_manifest, task_rows
from .metrics import correct, recall_from_ranks, retrieval_ranks


@dataclass
class TaskData:
    """A task's test split, ready to score: images, texts and their targets."""

    task: str
    kind: str  #: "retrieval" or "classification"
    pixels: Batches  #: the test images, streamed from the image cache and normalised on the device
    texts: list[str]  #: captions (retrieval) or class prompts (classification)
    targets: np.ndarray  #: caption -> image (retrieval) or image -> class (classification)
    gallery: int = 0  #: retrieval within consecutive galleries of this many test images (0 = the whole task)
    tokens: list[dict[str, torch.Tensor]] | None = None  #: ``texts`` tokenized once (:func:`sglora.backbone.clip.text_batches`)


def load_task(manifest: str | Path, task: str, processor, split: str = "test",
              class_prompt: str = "a photo of a {}", cache: str | Path | None = None, workers: int = 0,
              gallery: int = 0) -> TaskData:
    """A task's split; its images stream from the image cache ``cache`` (decoded on the
    fly without one) with ``workers`` DataLoader workers, never all in memory; its texts
    are tokenized here, once, for every LoRA scored on it."""
    rows = task_rows(read_manifest(manifest, [task]), task, split)
    if not rows:
        raise SGLoraError(f"{manifest}: task {task!r} has no {split} images")
    pixels = task_batches([r["image_path"] for r in rows], processor, cache, workers=workers)
    classes = sorted({r["class_name"] for r in rows})
    if len(classes) > 1:
        texts = [class_prompt.format(c) for c in classes]
        targets = np.array([classes.index(r["class_name"]) for r in rows])
        return TaskData(task, "classification", pixels, texts, targets, tokens=text_batches(processor, texts))
    texts, owner = [], []
    for i, r in enumerate(rows):
        if not r["captions"]:
            raise SGLoraError(f"{manifest}: image {r['image_path']} of task {task!r} has no captions")
        texts += list(r["captions"])
        owner += [i] * len(r["captions"])
    return TaskData(task, "retrieval", pixels, texts, np.array(owner), gallery, text_batches(processor, texts))


def score_queries(model, processor, data: TaskData) -> dict[str, np.ndarray]:
    """Per-query results: ``{"i2t": ranks, "t2i": ranks}`` (retrieval) or ``{"correct": 0/1}``."""
    img = encode_images(model, data.pixels)
    txt = encode_texts(model, processor, data.texts, tokens=data.tokens)
    sim = (img @ txt.T).numpy()
    if data.kind == "classification":
        return {"correct": correct(sim, data.targets).astype(np.int64)}
    return gallery_ranks(sim, data.targets, data.gallery)


def gallery_ranks(sim: np.ndarray, caption_image: np.ndarray, gallery: int = 0) -> dict[str, np.ndarray]:
    """Retrieval ranks within consecutive galleries of ``gallery`` images and their captions
    (like MS-COCO's 5 x 1K protocol): a query competes only with its own gallery, so a
    metric does not fall just because a task has more test images. 0 = one gallery."""
    n_img = sim.shape[0]
    if not gallery or gallery >= n_img:
        return retrieval_ranks(sim, caption_image)
    i2t, t2i = np.zeros(n_img, np.int64), np.zeros(len(caption_image), np.int64)
    for start in range(0, n_img, gallery):
        imgs = np.arange(start, min(start + gallery, n_img))
        caps = np.flatnonzero((caption_image >= start) & (caption_image < imgs[-1] + 1))
        r = retrieval_ranks(sim[np.ix_(imgs, caps)], caption_image[caps] - start)
        i2t[imgs], t2i[caps] = r["i2t"], r["t2i"]
    return {"i2t": i2t, "t2i": t2i}


def metrics_of(queries: dict[str, np.ndarray]) -> dict[str, float]:
    """The metrics of :func:`score_queries`'s per-query results."""
    if "correct" in queries:
        return {"accuracy": float(100.0 * np.mean(queries["correct"]))}
    return recall_from_ranks(queries)


def score(model, processor, data: TaskData) -> dict[str, float]:
    """The metrics of the model on one task's test split."""
    return metrics_of(score_queries(model, processor, data))


def evaluate_queries(model, processor, data: TaskData, vectors: np.ndarray | None, layout: Layout | None,
                     scaling: float) -> list[dict[str, np.ndarray]]:
    """Per-query results of each LoRA vector (rows of ``vectors``); ``None`` = the bare backbone."""
    if vectors is None:
        return [score_queries(model, processor, data)]
    # identical rows (e.g. samples at temperature 0) are evaluated once
    unique, inverse = np.unique(np.ascontiguousarray(vectors), axis=0, return_inverse=True)
    first = [int(np.flatnonzero(inverse.reshape(-1) == u)[0]) for u in range(len(unique))]
    out = []
    for i in first:
        with merged(model, vectors[i], layout, scaling):
            out.append(score_queries(model, processor, data))
    return [out[u] for u in inverse.reshape(-1)]


def evaluate_vectors(model, processor, data: TaskData, vectors: np.ndarray | None, layout: Layout | None,
                     scaling: float) -> list[dict[str, float]]:
    """Metrics of each LoRA vector (rows of ``vectors``); ``None`` = the bare backbone."""
    return [metrics_of(q) for q in evaluate_queries(model, processor, data, vectors, layout, scaling)]


def layout_rank(layout: Layout, where: str) -> int:
    """The LoRA rank of a layout: the rows of its ``lora_A`` factors (the columns of ``lora_B``)."""
    ranks = {shape[0] for key, shape in zip(layout.keys, layout.shapes) if ".lora_A." in key}
    ranks |= {shape[1] for key, shape in zip(layout.keys, layout.shapes) if ".lora_B." in key}
    if len(ranks) != 1:
        raise SGLoraError(f"{where}: the layout's LoRA factors have ranks {sorted(ranks)}; expected one rank")
    return int(ranks.pop())


def summarize(per_sample: list[dict[str, np.ndarray]], runs: list[int] | None = None) -> dict:
    """Metrics of each sample (from its per-query results), their mean and spread over samples,
    the best of N (labelled: it peeks at test data), and the per-query results themselves:
    ``ranks`` ``{"i2t": [[rank per image] per sample], "t2i": [...]}`` or ``correct``
    ``[[0/1 per image] per sample]``, with ``runs`` (the run, e.g. CVAE seed, of each sample)."""
    runs = [0] * len(per_sample) if runs is None else [int(r) for r in runs]
    if len(runs) != len(per_sample):
        raise ValueError(f"{len(runs)} run labels for {len(per_sample)} samples")
    metrics = [metrics_of(q) for q in per_sample]
    keys = list(metrics[0])
    arr = np.array([[m[k] for k in keys] for m in metrics])
    if "accuracy" in keys:
        best_i = int(np.argmax(arr[:, keys.index("accuracy")]))
        queries = {"correct": [np.asarray(q["correct"]).astype(int).tolist() for q in per_sample]}
    else:
        best_i = int(np.argmax(arr[:, keys.index("i2t_r1")] + arr[:, keys.index("t2i_r1")]))
        queries = {"ranks": {d: [np.asarray(q[d]).astype(int).tolist() for q in per_sample] for d in ("i2t", "t2i")}}
    return {
        "n": len(per_sample),
        "mean": dict(zip(keys, arr.mean(0).tolist())),
        "std": dict(zip(keys, arr.std(0).tolist())),
        "best_of_n": dict(zip(keys, arr[best_i].tolist())),
        "per_sample": metrics,
        "runs": runs,
        **queries,
    }


def check_range(vectors: np.ndarray, bound: float | None, what: str) -> None:
    """Refuse LoRAs far outside the repository they come from: a norm above ``bound`` (the
    candidates file records it; see ``sglora.experts.repository.NORM_FACTOR``). No bound, no check."""
    if bound is None:
        return
    norm = float(np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1).max())
    if not norm <= bound:
        raise SGLoraError(f"{what} have norm {norm:.3g}, above the file's norm_bound {bound:.3g} (far beyond any "
                          "expert of the repository it was made from); the file is damaged")


def evaluate_method(backbone: str, manifest: str | Path, tasks: list[str], method: str, out_dir: str | Path,
                    candidates: str | Path | None = None, scaling: float | None = None, group: str = "",
                    threads: int | None = None, device: str = "auto", cache: str | Path | None = None,
                    gallery: int = 0, lora=None) -> dict:
    """Write ``out_dir/<task>.json`` for each task: the metrics of the method's LoRA(s).
    ``device``: "auto" = CUDA when available; ``cache``: the dataset's image cache.
    The scaling stored with the candidates (:func:`~sglora.generator.candidates.save_candidates`) is the
    truth: ``lora`` (the run's :class:`~sglora.experts.lora.LoraSpec`) or ``scaling`` that disagree with
    it are an error. Without a stored one, ``lora``'s rank must be the one of the candidates'
    layout (the scaling is then its alpha / rank), else ``scaling`` is taken as given."""
    from tqdm import tqdm

    from ..generator.candidates import load_candidates

    vectors, layout, info = ({}, None, {"info": {}}) if candidates is None else load_candidates(candidates)
    stored = info.get("scaling")
    if stored is not None:
        given = lora.scaling if lora is not None else scaling
        if given is not None and not np.isclose(given, stored, rtol=1e-6, atol=0.0):
            raise SGLoraError(f"{candidates}: the candidates were made with LoRA scaling {stored:g} (alpha / rank), but "
                              f"{'--lora gives' if lora is not None else 'the scaling given is'} {given:g}; pass the lora "
                              "section of the run that wrote the candidates")
        scaling = stored
    elif candidates is not None and lora is not None:
        rank = layout_rank(layout, str(candidates))
        if lora.rank != rank:
            raise SGLoraError(f"{candidates}: the candidates' layout has LoRA rank {rank}, but lora.rank is {lora.rank} "
                              "(--lora); pass the lora section of the run that wrote the candidates")
        scaling = lora.scaling
    if candidates is not None and scaling is None:
        raise SGLoraError("evaluate: a LoRA scaling (alpha / rank) is needed with candidates")
    if threads:
        torch.set_num_threads(threads)
    model, processor = load_clip(backbone, device=pick_device(device))
    results = {}
    for task in tqdm(tasks, desc=f"evaluate[{group}/{method}]"):
        data = load_task(manifest, task, processor, cache=cache, workers=threads or 0, gallery=gallery)
        if candidates is not None and task not in vectors:
            raise SGLoraError(f"{candidates}: no candidate LoRA for task {task!r}")
        if candidates is not None and not np.isfinite(vectors[task]).all():
            raise SGLoraError(f"{candidates}: the candidate LoRA(s) of method {method!r} for task {task!r} hold "
                              f"{int(vectors[task].size - np.isfinite(vectors[task]).sum())} non-finite (NaN/inf) value(s)")
        if candidates is not None:
            check_range(vectors[task], info.get("norm_bound"), f"{candidates}: the candidate LoRA(s) of method "
                        f"{method!r} for task {task!r}")
        try:
            per = evaluate_queries(model, processor, data, vectors.get(task) if candidates else None, layout, scaling or 1.0)
        except SGLoraError as err:
            raise SGLoraError(f"evaluate method {method!r}, task {task!r}: {err}") from err
        task_info = info["info"].get(task, {})
        runs = task_info.get("runs")
        if runs is not None and len(runs) != len(per):
            raise SGLoraError(f"{candidates}: info[{task!r}]['runs'] has {len(runs)} run labels for {len(per)} "
                              "samples; expected one per sample")
        res = {"method": method, "group": group, "task": task, "kind": data.kind, **summarize(per, runs),
               "info": task_info}
        write_json(Path(out_dir) / f"{task}.json", res, flat_int_lists=True)
        results[task] = res["mean"]
    return results
