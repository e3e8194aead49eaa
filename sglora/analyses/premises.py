"""The benchmark's premises, checked on every run, on the validation tasks only.

SG-LoRA assumes that a task whose description is close to an expert's benefits from that
expert. A benchmark can only test the method where that holds, so the run measures, on
the validation tasks (unseen tasks that are never test tasks: no test number is looked at
before the tables):

1. **nearest in family**: the share of validation tasks (and of leave-one-out conditions:
   each expert against the others) whose description-nearest expert is of the task's own
   family (embedded worlds: the family word; real datasets: not defined, reported as such);
2. **headroom**: Oracle minus Zero-Shot R@1 (mean of I2T and T2I, or accuracy) on the
   validation tasks (their own Oracle LoRAs), when the run compares with the Oracle;
3. **family transfer**: on every validation task of the experts' dataset, the experts of
   its own family (their mean snapshot) beat those of the other families.

``check_premises`` returns the numbers and the verdicts; on an embedded world (or with
``enforce``) a failed premise is an error naming the premise, the threshold and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..io import SGLoraError, Settings, setting


@dataclass
class PremiseSpec(Settings):
    """Thresholds of the premises (config section ``premises``)."""

    section: ClassVar[str] = "premises"

    nearest_in_family: float = setting(0.9, "least share of tasks whose description-nearest expert is of their family",
                                       min=0, max=1)
    oracle_gain: float = setting(10.0, "least Oracle minus Zero-Shot R@1 (mean of I2T and T2I) on the validation tasks")
    enforce: bool | None = setting(None, "stop on a failed premise; None = only on embedded worlds")

    def enforced_on(self, experts_dataset: str, embedded) -> bool:
        """Whether a failed premise stops the run: ``enforce``, or unset, the experts' dataset
        being one of the ``embedded`` datasets."""
        return self.enforce if self.enforce is not None else experts_dataset in embedded


def task_families(embeddings: dict[str, dict], embedded) -> dict[str, str | None]:
    """Task -> family of an embedding table's rows: the family word on ``embedded`` datasets,
    ``None`` elsewhere."""
    return {t: (task_family(r["task_name"]) if r["dataset"] in embedded else None) for t, r in embeddings.items()}


def task_family(class_name: str) -> str | None:
    """The family of an embedded world's class (its family word), ``None`` if it has none."""
    from ..data.world import family_word

    return family_word(class_name)


def nearest_in_family(queries: dict[str, np.ndarray], query_family: dict[str, str | None], keys: np.ndarray,
                      key_tasks: list[str], key_family: list[str | None]) -> dict:
    """For each query task: its description-nearest expert (cosine; itself excluded) and
    whether that expert is of its family. Tasks without a family are left out."""
    k = keys / (np.linalg.norm(keys, axis=1, keepdims=True) + 1e-12)
    rows = {}
    for task, q in queries.items():
        if query_family.get(task) is None:
            continue
        sim = k @ (q / (np.linalg.norm(q) + 1e-12))
        sim = np.where(np.array(key_tasks) == task, -np.inf, sim)
        j = int(np.argmax(sim))
        rows[task] = {"nearest": key_tasks[j], "similarity": float(sim[j]), "family": query_family[task],
                      "nearest_family": key_family[j], "in_family": key_family[j] == query_family[task]}
    share = float(np.mean([r["in_family"] for r in rows.values()])) if rows else None
    return {"share": share, "tasks": rows}


def nearest_parts(queries: dict[str, np.ndarray], families: dict[str, str | None], keys: np.ndarray,
                  expert_tasks: list[str]) -> dict:
    """Premise 1 on both sets: the validation tasks (``queries``) against the experts, and
    each expert against the others (leave-one-out conditions)."""
    expert_family = [families.get(t) for t in expert_tasks]
    return {"validation": nearest_in_family(queries, families, keys, expert_tasks, expert_family),
            "loo": nearest_in_family(dict(zip(expert_tasks, keys)), dict(zip(expert_tasks, expert_family)), keys,
                                     expert_tasks, expert_family)}


def _primary(m: dict) -> float:
    return m["accuracy"] if "accuracy" in m else 0.5 * (m["i2t_r1"] + m["t2i_r1"])


def headroom(zero_shot: dict[str, dict], oracle: dict[str, dict]) -> dict:
    """Oracle minus Zero-Shot of a group from its metric files' means (``{task: mean metrics}``)."""
    tasks = sorted(zero_shot)
    gain = {t: _primary(oracle[t]) - _primary(zero_shot[t]) for t in tasks}
    out = {"gain": float(np.mean(list(gain.values()))), "per_task": gain}
    for key in ("i2t_r1", "t2i_r1", "accuracy"):
        if key in zero_shot[tasks[0]]:
            out[key] = float(np.mean([oracle[t][key] - zero_shot[t][key] for t in tasks]))
    return out


def family_transfer(model, processor, manifest: str | Path, tasks: list[str], families: dict[str, str | None],
                    experts, expert_family: list[str | None], scaling: float, layout,
                    cache: str | Path | None = None, gallery: int = 0) -> dict:
    """Each expert's mean snapshot on each task: same-family mean vs other-family mean."""
    from ..evaluation.scoring import evaluate_vectors, load_task

    rows = {}
    for t in tasks:
        if families.get(t) is None:
            continue
        per = evaluate_vectors(model, processor, load_task(manifest, t, processor, cache=cache, gallery=gallery), experts.mu, layout, scaling)
        same = [_primary(m) for m, f in zip(per, expert_family) if f == families[t]]
        other = [_primary(m) for m, f in zip(per, expert_family) if f != families[t]]
        if same and other:
            rows[t] = {"same_family": float(np.mean(same)), "other_family": float(np.mean(other))}
    wins = sum(r["same_family"] > r["other_family"] for r in rows.values())
    return {"wins": wins, "tasks": len(rows), "per_task": rows,
            "same_family": float(np.mean([r["same_family"] for r in rows.values()])) if rows else None,
            "other_family": float(np.mean([r["other_family"] for r in rows.values()])) if rows else None}


def nearest_verdicts(nearest: dict, spec: PremiseSpec) -> list[dict]:
    """The verdict lines of premise 1 (``nearest_parts``'s result)."""
    out = []
    for name, part in (("nearest expert in family (validation tasks)", nearest["validation"]),
                       ("nearest expert in family (leave-one-out conditions)", nearest["loo"])):
        share = part["share"]
        out.append({"premise": name, "value": share, "threshold": spec.nearest_in_family,
                    "passed": None if share is None else share >= spec.nearest_in_family})
    return out


def verdicts(result: dict, spec: PremiseSpec) -> list[dict]:
    """One line per premise: name, value, threshold, passed (None = not defined here)."""
    out = nearest_verdicts(result["nearest"], spec)
    for group, h in result["headroom"].items():
        out.append({"premise": f"Oracle minus Zero-Shot R@1 ({group})", "value": h["gain"], "threshold": spec.oracle_gain,
                    "passed": h["gain"] >= spec.oracle_gain})
    ft = result["family_transfer"]
    out.append({"premise": "same-family experts beat other-family experts (validation tasks)",
                "value": None if not ft["tasks"] else ft["wins"] / ft["tasks"], "threshold": 1.0,
                "passed": None if not ft["tasks"] else ft["wins"] == ft["tasks"]})
    return out


def render_premises(result: dict) -> str:
    """The premise check as Markdown (for the report and the README)."""
    lines = ["**Benchmark premises** (on the validation tasks; no test task is looked at)", "",
             "| premise | value | threshold | holds |", "|---|---:|---:|---|"]
    for v in result["verdicts"]:
        val = "n/a" if v["value"] is None else f"{v['value']:.2f}"
        ok = "not defined" if v["passed"] is None else ("yes" if v["passed"] else "**no**")
        lines.append(f"| {v['premise']} | {val} | {v['threshold']:.2f} | {ok} |")
    miss = [f"{t} -> {r['nearest']}" for part in result["nearest"].values() for t, r in part["tasks"].items()
            if not r["in_family"]]
    lines += ["", "Description-nearest expert of another family: " + (", ".join(miss) if miss else "none") + "."]
    ft = result.get("family_transfer", {"tasks": 0})
    if ft["tasks"]:
        lines.append(f"Experts on the validation tasks of their dataset: same family {ft['same_family']:.2f}, other families "
                     f"{ft['other_family']:.2f} R@1 (mean of I2T and T2I), same family better on {ft['wins']}/{ft['tasks']}.")
    return "\n".join(lines) + "\n"


def failures(result: dict) -> list[str]:
    """The failed premises of a result, one line each (value < threshold)."""
    return [f"{v['premise']}: {v['value']:.2f} < {v['threshold']:.2f}" for v in result["verdicts"] if v["passed"] is False]


def check_premises(backbone: str, manifest: str | Path, embeddings: dict[str, dict], experts, layout, scaling: float,
                   tasks: dict[str, list[str]], families: dict[str, str | None],
                   metrics: dict[str, tuple[str | Path, str | Path]], spec: PremiseSpec, enforce: bool,
                   modality: str = "textual", device: str = "auto", cache: str | Path | None = None,
                   gallery: int = 0) -> dict:
    """Measure the premises (see the module docstring).

    ``tasks``: ``{"validation": [...the validation tasks...], "transfer": [...those on the
    experts' dataset...]}``; ``families``: task -> family (``None`` where undefined);
    ``manifest``: the experts' dataset (family transfer is measured there);
    ``metrics``: name -> (zero-shot metrics folder, Oracle metrics folder) of the validation
    tasks (``{"validation": ...}``); the premises read nothing else.
    Raises ``SGLoraError`` naming every failed premise when ``enforce``."""
    import json

    from ..backbone.clip import load_clip
    from ..devices import pick_device

    key = "text_embedding" if modality == "textual" else "visual_embedding"
    keys = experts.embedding(modality)
    expert_family = [families.get(t) for t in experts.tasks]
    queries = {t: embeddings[t][key] for t in tasks["validation"]}
    result = {"nearest": nearest_parts(queries, families, keys, experts.tasks), "headroom": {}}
    for name, (zs_dir, or_dir) in sorted(metrics.items()):
        measured = sorted(p.stem for p in Path(zs_dir).glob("*.json"))
        zs = {t: json.loads((Path(zs_dir) / f"{t}.json").read_text())["mean"] for t in measured}
        orc = {t: json.loads((Path(or_dir) / f"{t}.json").read_text())["mean"] for t in measured}
        result["headroom"][name] = headroom(zs, orc)
    model, processor = load_clip(backbone, device=pick_device(device))
    result["family_transfer"] = family_transfer(model, processor, manifest, tasks["transfer"], families, experts,
                                                expert_family, scaling, layout, cache=cache, gallery=gallery)
    result["verdicts"] = verdicts(result, spec)
    result["enforced"] = enforce
    failed = failures(result)
    if enforce and failed:
        raise SGLoraError("the benchmark's premises do not hold, so it cannot test SG-LoRA: " + "; ".join(failed)
                          + "\n" + render_premises(result))
    return result


def run_premises(backbone: str, manifest: str | Path, repository: str | Path, embeddings: str | Path,
                 experts_dataset: str, tasks: dict[str, list[str]], embedded: set[str], metrics: dict[str, tuple],
                 spec: PremiseSpec, out: str | Path, markdown: str | Path, modality: str = "textual",
                 device: str = "auto", cache=None, gallery: int = 0) -> dict:
    """Check the premises of a run (its repository and task embeddings; ``tasks``: the
    ``validation`` and ``transfer`` task lists) and write premises.json and premises.md. The
    tasks of ``embedded`` datasets take their class's family; on an embedded experts' dataset
    a failed premise is an error unless ``spec.enforce`` says otherwise."""
    from ..backbone.embed import read_embeddings
    from ..experts.repository import Repository
    from ..io import atomic_path, write_json

    repo = Repository(repository)
    experts = repo.experts()
    emb = read_embeddings(embeddings)
    families = task_families(emb, embedded)
    enforce = spec.enforced_on(experts_dataset, embedded)
    res = check_premises(backbone, manifest, emb, experts, repo.layout, repo.lora.scaling, tasks, families, metrics,
                         spec, enforce, modality=modality, device=device, cache=cache, gallery=gallery)
    write_json(out, res)
    with atomic_path(markdown) as tmp:
        tmp.write_text(render_premises(res))
    return res


def run_description_premises(embeddings: str | Path, experts_dataset: str, experts: list[str], tasks: list[str],
                             embedded: set[str], spec: PremiseSpec, out: str | Path, modality: str = "textual") -> dict:
    """The premise that needs only the backbone and the task descriptions (description-nearest
    expert in the task's family, on the validation tasks and leave-one-out over the experts),
    measured from the task embeddings before any LoRA is trained, so a world that fails it
    stops the run in minutes rather than after its LoRAs. Writes ``out`` (JSON); on an
    embedded experts' dataset (or with ``spec.enforce``) a failure is an error and writes
    nothing. The ``premises`` step measures the same premise again, from the repository, with
    the others."""
    from ..backbone.embed import read_embeddings
    from ..io import write_json

    key = "text_embedding" if modality == "textual" else "visual_embedding"
    emb = read_embeddings(embeddings)
    mine = read_embeddings(embeddings, experts_dataset)
    missing = [t for t in experts if t not in mine] + [t for t in tasks if t not in emb]
    if missing:
        raise SGLoraError(f"{embeddings}: no embedding of the tasks {missing} (experts of dataset {experts_dataset!r} "
                          "or validation tasks)")
    families = task_families(emb, embedded) | task_families({t: mine[t] for t in experts}, embedded)
    keys = np.stack([mine[t][key] for t in experts])
    result = {"nearest": nearest_parts({t: emb[t][key] for t in tasks}, families, keys, list(experts))}
    result["verdicts"] = nearest_verdicts(result["nearest"], spec)
    result["enforced"] = spec.enforced_on(experts_dataset, embedded)
    failed = failures(result)
    if result["enforced"] and failed:
        raise SGLoraError("the benchmark's premises do not hold, so it cannot test SG-LoRA (checked on the task "
                          "descriptions, before any LoRA is trained): " + "; ".join(failed) + "\n" + render_premises(result))
    write_json(out, result)
    return result
