"""Novelty of generated LoRAs: do they replicate training snapshots?

For every generated LoRA (SG-LoRA's samples, P-diff's, the prior-sampling and
noisy-expert baselines') of a task:

- its distance to the nearest training snapshot of the repository, in two spaces: the
  CVAE's normalised space ((x - shift) / scale, the space the generator models) and the
  update space ΔW = s·B·A (Frobenius norm over every module, computed from the factors:
  <B1 A1, B2 A2> = sum((B1ᵀB2) ⊙ (A1 A2ᵀ)), never materialising ΔW);
- against two scales of the repository itself: how far a snapshot is from the nearest
  *other* snapshot of its own expert (``within``), and from the nearest snapshot of another
  expert (``between``);
- whether the nearest snapshot's expert is the task's description-nearest expert;
- how its retrieval agrees with that nearest snapshot's, query by query, on the task's test
  queries: Spearman correlation of the per-query ranks (mean over I2T and T2I) and the share
  of queries where both hit or both miss at R@1 (classification: the share of images both
  classify alike). The nearest snapshots are evaluated here (the cheapest honest reading of
  "the nearest expert evaluated on the same queries": exactly the checkpoint the sample is
  nearest to, on exactly the sample's queries).

Each per-task number is averaged over the task's samples; a group's value is the mean over
tasks with a 95% bootstrap interval over tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import SGLoraError
from ..experts.lora import Layout
from ..baselines.merging_spaces import factor_pairs

GENERATIVE = ("sglora", "prior_sampling", "noisy_expert", "pdiff", "cond_pdiff")


# --- distances -----------------------------------------------------------------------

def normalised_distances(x: np.ndarray, y: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(n, m) Euclidean distances of the rows of ``x`` and ``y`` after (v - shift) / scale."""
    a = (np.asarray(x, np.float64) - shift) / scale
    b = (np.asarray(y, np.float64) - shift) / scale
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def _factor_stacks(x: np.ndarray, layout: Layout) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per module: A (n, r, in) and B (n, out, r) of every row of ``x``."""
    x = np.asarray(x, np.float64)
    out = []
    for _, a, b in factor_pairs(layout):
        oa, ob = layout.offsets[a], layout.offsets[b]
        out.append((x[:, oa : oa + layout.sizes[a]].reshape(len(x), *layout.shapes[a]),
                    x[:, ob : ob + layout.sizes[b]].reshape(len(x), *layout.shapes[b])))
    return out


def delta_gram(x: np.ndarray, y: np.ndarray, layout: Layout, scaling: float) -> np.ndarray:
    """(n, m) Frobenius inner products <ΔW_x, ΔW_y> summed over modules, ΔW = scaling·B·A."""
    fx, fy = _factor_stacks(x, layout), _factor_stacks(y, layout)
    g = np.zeros((len(x), len(y)))
    for (ax, bx), (ay, by) in zip(fx, fy):
        bb = np.einsum("nor,mos->nmrs", bx, by)  # Bxᵀ By
        aa = np.einsum("nri,msi->nmrs", ax, ay)  # Ax Ayᵀ
        g += (bb * aa).sum((2, 3))
    return scaling**2 * g


def delta_distances(x: np.ndarray, y: np.ndarray, layout: Layout, scaling: float) -> np.ndarray:
    """(n, m) distances ||ΔW_x - ΔW_y||_F over all modules."""
    nx = np.diag(delta_gram(x, x, layout, scaling)) if len(x) < 2048 else _self_norms(x, layout, scaling)
    ny = np.diag(delta_gram(y, y, layout, scaling)) if len(y) < 2048 else _self_norms(y, layout, scaling)
    sq = nx[:, None] + ny[None, :] - 2.0 * delta_gram(x, y, layout, scaling)
    return np.sqrt(np.clip(sq, 0.0, None))


def _self_norms(x, layout, scaling):
    return np.array([delta_gram(v[None], v[None], layout, scaling)[0, 0] for v in x])


def within_between(dist: np.ndarray, expert_index: np.ndarray) -> dict[str, np.ndarray]:
    """From snapshot-to-snapshot distances: per snapshot, the distance to the nearest other
    snapshot of its own expert (``within``; NaN for an expert of one snapshot) and to the
    nearest snapshot of another expert (``between``)."""
    idx = np.asarray(expert_index)
    same = idx[:, None] == idx[None, :]
    d = np.asarray(dist, np.float64).copy()
    np.fill_diagonal(d, np.inf)
    within = np.where(same, d, np.inf).min(1)
    between = np.where(~same, d, np.inf).min(1)
    within[~np.isfinite(within)] = np.nan
    between[~np.isfinite(between)] = np.nan
    return {"within": within, "between": between}


# --- retrieval agreement -------------------------------------------------------------

def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(a: dict, b: dict) -> dict[str, float]:
    """Query-by-query agreement of two per-query results (``{"i2t", "t2i"}`` ranks or ``{"correct"}``)."""
    if "correct" in a:
        return {"spearman": float("nan"), "r1_agreement": float(np.mean(np.asarray(a["correct"]) == np.asarray(b["correct"])))}
    rho = [spearman(np.asarray(a[d]), np.asarray(b[d])) for d in ("i2t", "t2i")]
    hits = [(np.asarray(a[d]) <= 1) == (np.asarray(b[d]) <= 1) for d in ("i2t", "t2i")]
    return {"spearman": float(np.nanmean(rho)) if not all(np.isnan(rho)) else float("nan"),
            "r1_agreement": float(np.mean(np.concatenate(hits)))}


def sample_queries(result: dict, i: int) -> dict:
    """The per-query results of sample ``i`` of a ``<task>.json``."""
    if "correct" in result:
        return {"correct": result["correct"][i]}
    return {d: result["ranks"][d][i] for d in ("i2t", "t2i")}


# --- the group -----------------------------------------------------------------------

def task_interval(values: list[float], n_boot: int = 2000, seed: int = 0):
    """Mean over tasks and its 95% bootstrap interval over tasks (NaN tasks left out)."""
    from ..evaluation.stats import interval

    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if len(v) == 0:
        return None
    rng = np.random.default_rng(seed)
    reps = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return interval(float(v.mean()), reps)


def group_novelty(samples: dict[str, dict[str, np.ndarray]], snapshots: np.ndarray, expert_index: np.ndarray,
                  expert_tasks: list[str], nearest_expert: dict[str, str], layout: Layout, scaling: float,
                  shift: np.ndarray, scale: np.ndarray, sample_results: dict[str, dict[str, dict]] | None = None,
                  snapshot_queries=None, n_boot: int = 2000) -> dict:
    """Novelty of every generated LoRA of a group.

    ``samples``: method -> task -> (n x D); ``snapshots`` (M x D) with ``expert_index`` into
    ``expert_tasks``; ``nearest_expert``: task -> its description-nearest expert;
    ``sample_results``: method -> task -> the method's ``<task>.json`` (per-query ranks);
    ``snapshot_queries(task, snapshot_index)``: the per-query results of a snapshot on the
    task (None: no agreement is measured)."""
    ss_norm = normalised_distances(snapshots, snapshots, shift, scale)
    ss_delta = delta_distances(snapshots, snapshots, layout, scaling)
    ref = {"normalised": within_between(ss_norm, expert_index), "delta": within_between(ss_delta, expert_index)}
    scale_of = {space: float(np.nanmedian(ref[space]["within"])) for space in ref}
    out = {"reference": {space: {k: {"median": float(np.nanmedian(v)), "values": v.tolist()} for k, v in r.items()}
                         for space, r in ref.items()}, "methods": {}}
    for method, by_task in samples.items():
        per_task, raw = {}, {"normalised": [], "delta": []}
        for task, x in by_task.items():
            dn = normalised_distances(x, snapshots, shift, scale)
            dd = delta_distances(x, snapshots, layout, scaling)
            near = dn.argmin(1)
            row = {"n": len(x), "nearest_snapshot": near.tolist(),
                   "nearest_expert": [expert_tasks[expert_index[j]] for j in near],
                   "distance_normalised": dn.min(1).tolist(), "distance_delta": dd.min(1).tolist()}
            row["same_as_description_nearest"] = float(np.mean([e == nearest_expert.get(task) for e in row["nearest_expert"]]))
            row["ratio_normalised"] = float(np.mean(dn.min(1)) / scale_of["normalised"])
            row["ratio_delta"] = float(np.mean(dd.min(1)) / scale_of["delta"])
            raw["normalised"] += row["distance_normalised"]
            raw["delta"] += row["distance_delta"]
            if sample_results is not None and snapshot_queries is not None:
                res = sample_results[method][task]
                ag = [agreement(sample_queries(res, i), snapshot_queries(task, int(j))) for i, j in enumerate(near)]
                row["spearman"] = float(np.nanmean([a["spearman"] for a in ag])) if any(
                    np.isfinite(a["spearman"]) for a in ag) else float("nan")
                row["r1_agreement"] = float(np.mean([a["r1_agreement"] for a in ag]))
            per_task[task] = row
        summary = {}
        for key in ("distance_normalised", "distance_delta", "ratio_normalised", "ratio_delta",
                    "same_as_description_nearest", "spearman", "r1_agreement"):
            vals = [np.mean(r[key]) if isinstance(r.get(key), list) else r.get(key, np.nan) for r in per_task.values()]
            iv = task_interval([float(v) for v in vals], n_boot)
            summary[key] = None if iv is None else {"estimate": iv.estimate, "lo": iv.lo, "hi": iv.hi}
        out["methods"][method] = {"per_task": per_task, "summary": summary, "distances": raw}
    return out


def render_novelty(res: dict, title: str, names: dict[str, str] | None = None) -> str:
    """The Markdown table of :func:`group_novelty`."""
    names = names or {}

    def cell(s):
        return "-" if s is None or not np.isfinite(s["estimate"]) else f"{s['estimate']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"

    md = [f"**{title}: novelty of generated LoRAs**", "",
          "| Method | d(nearest snapshot), normalised | ÷ within-expert | d(nearest snapshot), ΔW | ÷ within-expert | "
          "nearest snapshot of the description-nearest expert (seen tasks: their own) | rank agreement (Spearman) | R@1 agreement |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in res["methods"].items():
        s = r["summary"]
        md.append(f"| {names.get(m, m)} | " + " | ".join(cell(s[k]) for k in (
            "distance_normalised", "ratio_normalised", "distance_delta", "ratio_delta", "same_as_description_nearest",
            "spearman", "r1_agreement")) + " |")
    ref = res["reference"]
    md += ["", "| Repository scale (median over snapshots) | normalised | ΔW |", "|---|---:|---:|",
           f"| snapshot → nearest other snapshot of its expert (within) | {ref['normalised']['within']['median']:.3f} | "
           f"{ref['delta']['within']['median']:.4g} |",
           f"| snapshot → nearest snapshot of another expert (between) | {ref['normalised']['between']['median']:.3f} | "
           f"{ref['delta']['between']['median']:.4g} |",
           "", "Cells: mean over the group's tasks of the per-task mean over samples [95% bootstrap interval over tasks]. "
           "d: distance of a generated LoRA to its nearest training snapshot (normalised: the CVAE's standardised "
           "coordinates; ΔW: Frobenius norm of the update difference over all modules); ÷ within-expert: that "
           "distance over the median distance of a snapshot to the nearest other snapshot of its own expert (≤ 1: "
           "as close to a training checkpoint as the checkpoints of one expert are to each other). Agreement: of "
           "the sample's per-query retrieval ranks with its nearest snapshot's on the same test queries (Spearman, "
           "mean of I2T and T2I; R@1 agreement: share of queries both hit or both miss at rank 1)."]
    return "\n".join(md) + "\n"


def novelty_figure(res: dict, title: str, names: dict[str, str] | None = None):
    """Two panels (normalised, ΔW): each generator's distances to the nearest snapshot, and the
    repository's within- and between-expert nearest-snapshot distances."""
    import matplotlib.pyplot as plt

    names = names or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * (len(res["methods"]) + 2) + 1.8))
    for ax, space, key in ((axes[0], "normalised", "normalised"), (axes[1], "delta", "delta")):
        data, labels = [], []
        for m, r in res["methods"].items():
            data.append(r["distances"][key])
            labels.append(names.get(m, m))
        for k, lab in (("within", "snapshots: same expert"), ("between", "snapshots: other expert")):
            vals = [v for v in res["reference"][space][k]["values"] if v is not None and np.isfinite(v)]
            data.append(vals)
            labels.append(lab)
        ax.boxplot(data, vert=False, showfliers=False)
        ax.set_yticks(range(1, len(labels) + 1))
        ax.set_yticklabels(labels, fontsize=9)
        ax.set_xlabel("distance to the nearest training snapshot"
                      + (" (CVAE-normalised)" if space == "normalised" else " (||ΔW||_F)"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def evaluate_snapshots(model, processor, data, snapshots: np.ndarray, indices: list[int], layout: Layout,
                       scaling: float) -> dict[int, dict]:
    """Per-query results of the snapshots ``indices`` on one task (each evaluated once)."""
    from ..evaluation.scoring import evaluate_queries

    uniq = sorted(set(int(i) for i in indices))
    if not uniq:
        return {}
    per = evaluate_queries(model, processor, data, snapshots[uniq], layout, scaling)
    return {i: {k: np.asarray(v).tolist() for k, v in q.items()} for i, q in zip(uniq, per)}


def novelty_of_group(backbone: str, manifest: str | Path, tasks: list[str], repository: str | Path,
                     cvae_dir: str | Path, candidates: dict[str, str | Path], metrics: dict[str, str | Path],
                     embeddings: dict[str, dict], modality: str = "textual", seen: bool = False,
                     threads: int | None = None, device: str = "auto", cache: str | Path | None = None,
                     gallery: int = 0, n_boot: int = 2000) -> dict:
    """Everything :func:`group_novelty` needs, read from a run's files; the nearest snapshots
    are evaluated on each task's test queries."""
    import json

    import torch

    from ..backbone.clip import load_clip
    from ..devices import pick_device
    from ..generator.candidates import load_candidates
    from ..generator.cvae import load_cvae
    from ..evaluation.scoring import load_task
    from ..generator.prior import expert_weights
    from ..experts.repository import Repository

    if threads:
        torch.set_num_threads(threads)
    repo = Repository(repository)
    experts = repo.experts()
    parts, owner = [], []
    for t, v in repo.iter_snapshots():
        parts.append(v)
        owner += [experts.tasks.index(x) for x in t]
    snapshots, expert_index = np.concatenate(parts), np.asarray(owner)
    cvae, _ = load_cvae(cvae_dir)
    shift, scale = cvae.shift.double().numpy(), cvae.scale.double().numpy()
    if len(shift) != repo.layout.dim:
        raise SGLoraError(f"{cvae_dir}: the CVAE models {len(shift)} values, the repository's LoRAs {repo.layout.dim}")
    samples, results = {}, {}
    for m, path in candidates.items():
        vecs, lay, _ = load_candidates(path)
        if lay.keys != repo.layout.keys or lay.shapes != repo.layout.shapes:
            raise SGLoraError(f"{path}: candidates of {m!r} are not in the repository's LoRA layout")
        samples[m] = {t: vecs[t] for t in tasks}
        results[m] = {t: json.loads((Path(metrics[m]) / f"{t}.json").read_text()) for t in tasks}
    key = "text_embedding" if modality == "textual" else "visual_embedding"
    nearest_expert = {}
    for t in tasks:
        if seen and t in experts.tasks:  # a seen task's generator was trained to reproduce its own expert
            nearest_expert[t] = t
            continue
        idx, _, _ = expert_weights(embeddings[t][key], experts.embedding(modality), 1, 1.0)
        nearest_expert[t] = experts.tasks[idx[0]]
    model, processor = load_clip(backbone, device=pick_device(device))
    cache_q: dict[str, dict[int, dict]] = {}
    for t in tasks:
        wanted = {int(j) for m in samples for j in normalised_distances(samples[m][t], snapshots, shift, scale).argmin(1)}
        data = load_task(manifest, t, processor, cache=cache, workers=threads or 0, gallery=gallery)
        cache_q[t] = evaluate_snapshots(model, processor, data, snapshots, sorted(wanted), repo.layout, repo.lora.scaling)
    res = group_novelty(samples, snapshots, expert_index, experts.tasks, nearest_expert, repo.layout,
                        repo.lora.scaling, shift, scale, results, lambda t, j: cache_q[t][j], n_boot)
    res["tasks"], res["nearest_expert"] = list(tasks), nearest_expert
    return res


def write_novelty(res: dict, out: str | Path, markdown: str | Path, figure: str | Path, title: str,
                  names: dict[str, str] | None = None) -> None:
    """Write a group's novelty: the JSON, the Markdown table and the figure (``figure`` is the
    .png; a .pdf goes beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path, write_json
    from .figures import save_figure

    write_json(out, res)
    with atomic_path(markdown) as tmp:
        tmp.write_text(render_novelty(res, title, names))
    fig = novelty_figure(res, title, names)
    save_figure(fig, Path(figure).parent, Path(figure).stem)
    plt.close(fig)
