"""Studies that run the whole pipeline several times and compare the runs.

**Repository size.** SG-LoRA's premise is that a new task's description points at
experts that help it. How much does the generator gain from a bigger repository? The
study takes one pipeline config (the *base*, a full config of its own) and a list of
sizes ``n``; for each size it derives a config whose experts are the first ``n`` experts of
every family in the base's expert list (same world, same test and validation tasks, same
settings), runs the whole DAG on it, and reports, per size, SG-LoRA minus Top-K LoRA
Weighted and SG-LoRA minus the Oracle on the fixed test tasks, with paired 95% bootstrap
intervals (:mod:`sglora.evaluation.stats`). Every setting is still chosen on the validation tasks,
separately for each size.

``workflow/studies/repository_size.smk`` makes these cached rules; the functions here
are what its rules call.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..io import SGLoraError, Settings, setting
from ..methods import METHODS
from ..evaluation.stats import N_BOOT


@dataclass
class StudySpec(Settings):
    """The repository-size study (``config/studies/repository_size.yaml``)."""

    section: ClassVar[str] = "study"

    base: str = setting("config/studies/repository_size_base.yaml", "the full pipeline config whose experts are subsampled")
    results: str = setting("results/repository_size", "the study's folder; size N runs in <results>/experts-<N>")
    sizes: list[int] = setting(factory=lambda: [1, 2, 4], help="experts per family, distinct, each >= 1")
    group: str = setting("in_dataset", "the evaluation group of the base config that is compared")
    methods: list[str] = setting(factory=lambda: ["topk_weighted", "oracle"], help="SG-LoRA minus each of these")

    def check(self) -> None:
        if not self.sizes or any(int(n) < 1 for n in self.sizes) or len(set(self.sizes)) != len(self.sizes):
            raise SGLoraError(f"study.sizes: {self.sizes} must be distinct integers >= 1")
        self.sizes = sorted(int(n) for n in self.sizes)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise SGLoraError(f"study.methods: {unknown} are not methods; known: {sorted(METHODS)}")


def family_of_task(task: str) -> str:
    """The family of an embedded world's task id (``"tiger_lily"`` -> ``"lily"``)."""
    from .premises import task_family

    fam = task_family(task.replace("_", " "))
    if fam is None:
        raise SGLoraError(f"experts.tasks: {task!r} is not a class of the embedded world (no family)")
    return fam


def experts_per_family(tasks: list[str], n: int) -> list[str]:
    """The first ``n`` tasks of every family, in the order of ``tasks``."""
    taken: dict[str, int] = {}
    out = []
    for t in tasks:
        fam = family_of_task(t)
        if taken.get(fam, 0) < n:
            out.append(t)
            taken[fam] = taken.get(fam, 0) + 1
    short = sorted(f for f, c in taken.items() if c < n)
    if short:
        raise SGLoraError(f"experts.tasks: the families {short} have fewer than {n} experts in the base config; "
                          "add experts or lower study.sizes")
    return out


def size_config(base: dict, n: int, results: str | Path) -> dict:
    """The base pipeline config with ``n`` experts per family and its own results folder.

    Groups of seen tasks must stay among the experts: a seen group's task that the size
    drops is an error, not a silent change of the test set."""
    cfg = copy.deepcopy(base)
    cfg["experts"]["tasks"] = experts_per_family(list(base["experts"]["tasks"]), n)
    cfg["results"] = str(results)
    for g, spec in cfg.get("groups", {}).items():
        if spec.get("unseen", True) is False:
            dropped = [t for t in spec["tasks"] if t not in cfg["experts"]["tasks"]]
            if dropped:
                raise SGLoraError(f"groups.{g}: seen tasks {dropped} are not among the {n} expert(s) per family")
    return cfg


def collect_size(n: int, experts: list[str], files: dict[str, str | Path]) -> dict:
    """One size's results in one JSON-able dict: ``files`` maps ``"<method>/<task>"`` to
    the metrics file the pipeline wrote (``<task>.json`` of ``sglora evaluate``)."""
    import json

    results: dict[str, dict] = {}
    for key, path in files.items():
        m, sep, t = key.partition("/")
        if not (sep and m and t):
            raise SGLoraError(f"study: {key!r} is not METHOD/TASK")
        path = Path(path)
        if not path.exists():
            raise SGLoraError(f"{path}: metrics file missing (method {m!r}, task {t!r}, {n} expert(s) per family)")
        results.setdefault(m, {})[t] = json.loads(path.read_text())
    return {"experts_per_family": int(n), "experts": list(experts), "results": results}


def write_size_config(base: str | Path, n: int, results: str | Path, out: str | Path) -> dict:
    """Write one size's pipeline config (:func:`size_config` of the YAML file ``base``) to
    ``out``; returns it."""
    import yaml

    from ..io import atomic_path

    try:
        cfg = yaml.safe_load(Path(base).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SGLoraError(f"{base}: cannot read the base config ({err})") from err
    cfg = size_config(cfg, n, results)
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return cfg


def write_size_collection(config: str | Path, n: int, files: dict[str, str | Path], out: str | Path) -> None:
    """Write :func:`collect_size` of one size, its experts read from the size's config."""
    import yaml

    from ..io import write_json

    experts = yaml.safe_load(Path(config).read_text())["experts"]["tasks"]
    write_json(out, collect_size(n, experts, files))


def size_rows(sizes: list[dict], against: list[str], cols: list[str] | None = None,
              n_boot: int = N_BOOT) -> list[dict]:
    """One row per (size, metric) from ``collect_size`` outputs: SG-LoRA's mean with its
    interval and, for each method of ``against``, the paired difference SG-LoRA minus it
    (percent points). Sizes must cover the same test tasks."""
    from ..evaluation.stats import group_stats
    from .tables import metric_cols

    rows, tasks = [], None
    for size in sorted(sizes, key=lambda s: s["experts_per_family"]):
        results = {m: size["results"][m] for m in ["sglora", *against] if m in size["results"]}
        missing = [m for m in ["sglora", *against] if m not in results]
        if missing:
            raise SGLoraError(f"study: {size['experts_per_family']} expert(s) per family has no results for {missing}")
        these = {m: sorted(r) for m, r in results.items()}
        if len({tuple(v) for v in these.values()}) != 1 or (tasks is not None and these["sglora"] != tasks):
            raise SGLoraError(f"study: the sizes or methods were evaluated on different test tasks: {these}")
        tasks = these["sglora"]
        for col in cols or [c for c in metric_cols(results) if c.endswith("r1") or c == "accuracy"]:
            st = group_stats(results, col, n_boot)
            row = {"experts_per_family": size["experts_per_family"], "experts": len(size["experts"]), "metric": col,
                   "sglora": st.interval("sglora")}
            for m in against:
                row[m] = st.interval(m)
                row[f"sglora-{m}"] = st.difference("sglora", m)
            rows.append(row)
    return rows


def render_size_table(rows: list[dict], against: list[str], labels: dict[str, str], title: str) -> str:
    """Markdown: one line per size and metric, intervals in brackets."""
    head = ["experts per family", "experts", "metric", "SG-LoRA"] + [labels.get(m, m) for m in against] + \
           [f"SG-LoRA − {labels.get(m, m)}" for m in against]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["experts_per_family"]), str(r["experts"]), r["metric"], str(r["sglora"])] + [str(r[m]) for m in against] + \
                [str(r[f"sglora-{m}"]) + ("" if r[f"sglora-{m}"].excludes_zero() else " †") for m in against]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Means over the fixed test tasks with 95% bootstrap intervals (tasks × queries × runs); differences "
              "are paired. † = the interval contains 0 (no resolved difference). Each size chose its settings on "
              "the validation tasks."]
    return "\n".join(lines) + "\n"


def size_figure(rows: list[dict], against: list[str], labels: dict[str, str], out_dir: str | Path,
                name: str = "repository_size") -> None:
    """SG-LoRA minus each method against experts per family, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, col in zip(axes[0], metrics):
        sub = [r for r in rows if r["metric"] == col]
        xs = np.array([r["experts_per_family"] for r in sub], float)
        for j, m in enumerate(against):
            iv = [r[f"sglora-{m}"] for r in sub]
            est = np.array([i.estimate for i in iv])
            err = np.array([[i.estimate - i.lo for i in iv], [i.hi - i.estimate for i in iv]])
            ax.errorbar(xs * (1 + 0.04 * (j - (len(against) - 1) / 2)), est, yerr=err, marker="o", capsize=3,
                        label=f"SG-LoRA − {labels.get(m, m)}")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(x)) for x in xs])
        ax.set_xlabel("experts per family")
        ax.set_ylabel(f"{col} difference (points)")
        ax.set_title(col)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_figure(fig, Path(out_dir), name)
    plt.close(fig)


def write_study(sizes: list[dict], against: list[str], out_md: str | Path, out_json: str | Path,
                figures: str | Path, title: str = "Repository size", n_boot: int = N_BOOT) -> list[dict]:
    """The study's table (Markdown), its numbers (JSON) and figure, from ``collect_size``
    outputs, written atomically."""
    import json

    from ..io import atomic_path
    rows = size_rows(sizes, against, n_boot=n_boot)
    labels = {m: METHODS[m].label for m in against}
    with atomic_path(out_md) as tmp:
        tmp.write_text(render_size_table(rows, against, labels, title))
    plain = [{k: (v.__dict__ if hasattr(v, "se") else v) for k, v in r.items()} for r in rows]
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
    size_figure(rows, against, labels, figures)
    return rows


__all__ = ["StudySpec", "experts_per_family", "size_config", "write_size_config", "collect_size",
           "write_size_collection", "size_rows", "render_size_table", "size_figure",
           "write_study"]
