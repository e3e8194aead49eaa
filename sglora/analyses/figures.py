"""Figures like the paper's, drawn from the pipeline's files:

- ``experts_tsne``: t-SNE of the averaged LoRA of every expert (triangles) and of every
  Oracle of the unseen tasks (circles); supplementary Figures 8-9;
- ``samples_tsne``: t-SNE of SG-LoRA's samples, the Oracle's snapshots and the merging
  baselines for one unseen task; supplementary Figure 10;
- ``r1_bars``: R@1 (or accuracy) by method, one panel per evaluation group, with the
  tables' 95% bootstrap intervals as error bars.

Each is written as PNG and PDF.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..io import SGLoraError, atomic_path
from ..methods import label as method_label
from ..methods import methods_where
from ..evaluation.stats import N_BOOT

#: colour and marker of each merging baseline in the samples t-SNE
MERGING_STYLE = {"model_soups": ("tab:red", "*"), "adaptersoup": ("tab:orange", "P"), "topk_weighted": ("tab:purple", "X"),
                 "nearest_expert": ("tab:brown", "D"), "expert_mean": ("tab:pink", "v")}


def save_figure(fig, out_dir: Path, name: str) -> None:
    """Write ``fig`` as ``<out_dir>/<name>.png`` and ``.pdf``, atomically and without timestamps."""
    for ext in ("png", "pdf"):
        with atomic_path(out_dir / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})


def tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the rows of ``x`` (standardised; perplexity scaled to the number of rows)."""
    from sklearn.manifold import TSNE

    x = np.asarray(x, np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def experts_tsne(out_dir: Path, repository: Path, oracles: list[str | Path]) -> None:
    """``oracles``: the Oracle LoRA folders of the unseen tasks (folder name = task id)."""
    import matplotlib.pyplot as plt

    from ..experts.training import read_snapshots
    from ..experts.repository import Repository

    experts = Repository(repository).experts()
    vecs, labels, kinds = list(experts.mu), list(experts.names), ["expert"] * len(experts.tasks)
    for d in oracles:
        snaps, _ = read_snapshots(d)
        vecs.append(snaps.mean(0))
        labels.append(Path(d).name.replace("_", " "))
        kinds.append("oracle")
    xy = tsne(np.stack(vecs))
    fig, ax = plt.subplots(figsize=(8, 6.5))
    for kind, marker, colour in (("expert", "^", "tab:blue"), ("oracle", "o", "tab:gray")):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        ax.scatter(xy[idx, 0], xy[idx, 1], marker=marker, s=70, c=colour, label=f"{kind} LoRA (mean)", edgecolors="k")
    for (x, y), lab in zip(xy, labels):
        ax.annotate(lab, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_title("t-SNE of averaged LoRA parameters (triangles: experts)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=9)
    save_figure(fig, out_dir, "experts_tsne")
    plt.close(fig)


def samples_tsne(out_dir: Path, candidates: dict[str, str | Path], oracle: str | Path, task: str) -> None:
    """``candidates``: method -> the group's candidates file (SG-LoRA's, and the merging
    baselines' where the group has them); ``oracle``: the task's Oracle LoRA folder."""
    import matplotlib.pyplot as plt

    from ..generator.candidates import load_candidates
    from ..experts.training import read_snapshots

    sets = []
    sg, _, _ = load_candidates(candidates["sglora"])
    sets.append((f"{method_label('sglora')} samples", sg[task], "tab:green", "o"))
    snaps, _ = read_snapshots(oracle)
    sets.append((f"{method_label('oracle')} snapshots", snaps, "tab:gray", "s"))
    for m in methods_where(kind="merging"):
        if m in candidates:
            v, _, _ = load_candidates(candidates[m])
            sets.append((method_label(m), v[task], *MERGING_STYLE[m]))
    xy = tsne(np.concatenate([s[1] for s in sets]))
    fig, ax = plt.subplots(figsize=(7, 6))
    start = 0
    for label, v, colour, marker in sets:
        pts = xy[start : start + len(v)]
        start += len(v)
        ax.scatter(pts[:, 0], pts[:, 1], c=colour, marker=marker, s=160 if len(v) == 1 else 40, label=label,
                   edgecolors="k", linewidths=0.5)
    ax.set_title(f"t-SNE of LoRA parameters for unseen task '{task.replace('_', ' ')}'")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=9)
    save_figure(fig, out_dir, "samples_tsne")
    plt.close(fig)


def r1_bars(out_dir: Path, metrics: dict[str, str | Path], groups: dict, n_boot: int = N_BOOT) -> None:
    """Draw and save the R@1 bar chart of every group (``r1_bars.png``/``.pdf``)."""
    import matplotlib.pyplot as plt

    fig = r1_bars_figure(metrics, groups, n_boot)
    save_figure(fig, out_dir, "r1_bars")
    plt.close(fig)


def r1_bars_figure(metrics: dict[str, str | Path], groups: dict, n_boot: int = N_BOOT):
    """R@1 (or accuracy) by method, one panel per group; error bars: the tables' 95% intervals.
    ``metrics``: ``"<group>/<method>"`` -> metric folder (``sglora.analyses.tables.load_group``)."""
    import matplotlib.pyplot as plt

    from ..evaluation.stats import group_stats
    from .tables import load_group

    names = {"i2t_r1": "I2T R@1", "t2i_r1": "T2I R@1", "accuracy": "accuracy"}
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 5.0), squeeze=False)
    handles = {}
    for ax, (group, g) in zip(axes[0], groups.items()):
        res = load_group(metrics, group, g["methods"], g["tasks"])
        first = next(iter(next(iter(res.values())).values()))
        keys = ["accuracy"] if first["kind"] == "classification" else ["i2t_r1", "t2i_r1"]
        methods = list(res)
        x = np.arange(len(methods))
        width = 0.8 / len(keys)
        for j, k in enumerate(keys):
            stats = group_stats(res, k, n_boot)
            ivs = [stats.interval(m) for m in methods]
            err = [[iv.estimate - iv.lo for iv in ivs], [iv.hi - iv.estimate for iv in ivs]]
            bars = ax.bar(x + (j - (len(keys) - 1) / 2) * width, [iv.estimate for iv in ivs], width, yerr=err,
                          capsize=2, color=f"C{j}", label=names[k])
            handles.setdefault(names[k], bars)
        ax.set_xticks(x)
        ax.set_xticklabels([method_label(m) for m in methods], rotation=35, ha="right", fontsize=9)
        # long titles wrap inside their panel instead of running into the next one
        ax.set_title("\n".join(textwrap.wrap(g.get("title", group), 48)), fontsize=10)
        ax.set_ylabel("percent")
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles) + 1, fontsize=9,
               title="error bars: 95% bootstrap interval (tasks, test queries, runs)", title_fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig


def write_figures(out: str | Path, repository: str | Path, metrics: dict[str, str | Path],
                  candidates: dict[str, str | Path], loras: dict[str, str | Path], groups: dict,
                  samples_group: str | None = None) -> None:
    """The three figures into ``out``. ``metrics``: ``"<group>/<method>"`` -> metric folder;
    ``candidates``: ``"<group>/<method>"`` -> candidates file; ``loras``: ``"<dataset>/<task>"``
    -> trained LoRA folder (the Oracles of the unseen groups). ``samples_group``: the group
    whose first task the samples t-SNE shows (default: the first unseen group, in ``groups``
    order, that evaluates SG-LoRA and the Oracle)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    unseen = {g: v for g, v in groups.items() if v.get("unseen", True)}

    def given(mapping: dict, key: str, flag: str):
        if key not in mapping:
            raise SGLoraError(f"figures: no {flag} {key}=PATH given")
        return mapping[key]

    oracles = [given(loras, f"{d}/{t}", "--loras") for d, tasks in _by_dataset(unseen).items() for t in tasks]
    experts_tsne(out, Path(repository), oracles)
    eligible = [g for g, v in unseen.items() if "sglora" in v["methods"] and "oracle" in v["methods"]]
    if samples_group and samples_group not in eligible:
        raise SGLoraError(f"figures: group {samples_group!r} is not an unseen group with sglora and oracle ({eligible})")
    if eligible:
        g = samples_group or eligible[0]
        task = groups[g]["tasks"][0]
        shown = {m: candidates[f"{g}/{m}"] for m in groups[g]["methods"] if f"{g}/{m}" in candidates}
        given(candidates, f"{g}/sglora", "--candidates")
        samples_tsne(out, shown, given(loras, f"{groups[g]['dataset']}/{task}", "--loras"), task)
    r1_bars(out, metrics, groups)


def _by_dataset(groups: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for g in groups.values():
        if "oracle" in g["methods"]:
            out.setdefault(g["dataset"], [])
            out[g["dataset"]] += [t for t in g["tasks"] if t not in out[g["dataset"]]]
    return out


__all__ = ["write_figures", "tsne"]
