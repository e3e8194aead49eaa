"""Description controls: does the *meaning* of a task's description steer a method?

SG-LoRA and Top-K LoRA Weighted, each at its validation-chosen settings, are run on a
group's unseen tasks conditioned on five descriptions of each task:

- ``own`` (a): the task's own description (the group's ordinary candidates and metrics);
- ``other_family`` (b): the description of another task of the group, of another family,
  by a fixed derangement (:func:`derangement`: no task keeps its own, none stays in its family);
- ``random_words`` (c): as many words as the own description, drawn (seeded per task) from
  the world's words (:func:`world_words`);
- ``bare_template`` (d): the description template with its class placeholder removed
  ("a photo of a"), the same for every task;
- ``paraphrase`` (e): another template naming the same class (:func:`paraphrase_template`:
  the first of the world's caption leads, ``sglora.data.world.COARSE_LEADS``, that the
  description template does not start with: "an image of a yorkshire terrier").

Where the description's meaning drives a method, (b)-(d) score clearly below (a) (their
paired interval minus (a) lies wholly below 0) and (e) does not.

Everything but the condition is the method's own: the text encoder of the backbone embeds
a control description as ``sglora embed`` embeds a task's (:func:`sglora.backbone.clip.encode_texts`),
the candidates come from :func:`sglora.evaluation.method_selection.method_candidates` (SG-LoRA's samples keep
the task's seeds, so a control and (a) differ in the condition only) and are evaluated by
:func:`sglora.evaluation.scoring.evaluate_method`. (b) reuses the donor task's embedding from the task
embedding table as it is.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import SGLoraError, atomic_path, read_json, write_json

#: control id -> its label in the tables, in table order; "own" is the reference (a)
CONTROLS: dict[str, str] = {
    "own": "(a) own description",
    "other_family": "(b) another family's description",
    "random_words": "(c) random world words",
    "bare_template": "(d) bare template",
    "paraphrase": "(e) paraphrase",
}
#: the controls that are computed here ((a) is the group's own candidates and metrics)
COMPUTED = tuple(c for c in CONTROLS if c != "own")
#: the methods run under the controls, in table order
CONTROLLED = ("sglora", "topk_weighted")
#: the controls that fall below (a) where the description's meaning drives a method
BELOW = ("other_family", "random_words", "bare_template")
#: the placeholders of a description template (sglora.data.manifest.describe)
PLACEHOLDERS = ("<class name>", "<superclass name>", "<classes>")


def bare_template(template: str) -> str:
    """(d): the description template with its placeholders removed ("a photo of a")."""
    text = template
    for p in PLACEHOLDERS:
        text = text.replace(p, " ")
    text = " ".join(text.split()).strip(" ,;:")
    if not text:
        raise SGLoraError(f"description.template {template!r}: nothing is left without its placeholders; "
                          "the bare-template control needs words besides the class")
    return text


def paraphrase_template(template: str) -> str:
    """(e)'s template: ``"<lead> <class name>"`` with the first of the world's caption leads
    (``sglora.data.world.COARSE_LEADS``) that ``template`` does not already start with."""
    from ..data.world import COARSE_LEADS

    own = bare_template(template).lower()
    return next(f"{lead} <class name>" for lead in COARSE_LEADS if not own.startswith(lead.lower()))


def world_words(class_names: Sequence[str], template: str) -> list[str]:
    """The words (c) draws from: every word of the world's class names (its family words
    and member prefixes: ``sglora.data.world.class_names`` of the world's size) and of the bare
    description template; sorted, each once."""
    words = {w for name in class_names for w in name.split()} | set(bare_template(template).split())
    return sorted(words)


def random_description(task: str, length: int, words: Sequence[str], seed: int = 0) -> str:
    """(c): ``length`` words drawn with replacement from ``words``, seeded by (seed, task)."""
    from ..generator.sampling import task_seed

    if not words:
        raise SGLoraError("random-words control: the world has no words to draw from")
    rng = np.random.default_rng(task_seed(seed, f"random_words/{task}"))
    return " ".join(str(words[i]) for i in rng.integers(0, len(words), size=length))


def derangement(tasks: Sequence[str], families: dict[str, str], where: str = "the group") -> dict[str, str]:
    """(b): task -> the task whose description it gets, never itself, never of its family.

    The tasks are ordered family by family (families in order of first appearance) and each
    takes the task ``m`` places further round that order, ``m`` the largest family's size:
    a family fills ``s <= m`` consecutive places, so a shift by ``m`` leaves it, and with
    ``m <= n - m`` it does not come round to it again. Impossible where one family holds
    more than half of the tasks."""
    tasks = list(tasks)
    missing = [t for t in tasks if t not in families]
    if missing:
        raise SGLoraError(f"{where}: no family for tasks {missing}")
    members: dict[str, list[str]] = {}
    for t in tasks:
        members.setdefault(families[t], []).append(t)
    order = [t for group in members.values() for t in group]
    n, m = len(order), max((len(g) for g in members.values()), default=0)
    if 2 * m > n:
        largest = max(members, key=lambda f: len(members[f]))
        raise SGLoraError(f"{where}: the other-family control needs tasks of two families or more, none holding more "
                          f"than half of them; {m} of its {n} task(s) are of family {largest!r}")
    return {order[i]: order[(i + m) % n] for i in range(n)}


def control_descriptions(tasks: Sequence[str], embeddings: dict[str, dict], families: dict[str, str],
                         class_names: Sequence[str], template: str, seed: int = 0,
                         where: str = "the group") -> dict[str, dict[str, str]]:
    """``{control: {task: description}}`` of every control, (a) included; ``embeddings``:
    the task embedding table's rows (their ``description``, ``task_name``)."""
    from ..data.manifest import describe

    missing = [t for t in tasks if t not in embeddings]
    if missing:
        raise SGLoraError(f"{where}: no task embedding for {missing}")
    own = {t: embeddings[t]["description"] for t in tasks}
    donors = derangement(tasks, families, where)
    words = world_words(class_names, template)
    bare, para = bare_template(template), paraphrase_template(template)
    return {
        "own": own,
        "other_family": {t: own[donors[t]] for t in tasks},
        "random_words": {t: random_description(t, len(own[t].split()), words, seed) for t in tasks},
        "bare_template": {t: bare for t in tasks},
        "paraphrase": {t: describe(embeddings[t]["task_name"], para) for t in tasks},
    }


def world_class_names(world: dict | None, embeddings: dict[str, dict]) -> list[str]:
    """The class names whose words the random-words control draws from: those of the embedded
    world of size ``world`` (its ``families``, ``members`` options), else the embedding
    table's task names."""
    if world is None:
        return sorted({r["task_name"] for r in embeddings.values()})
    from ..data.world import class_names

    return class_names(**{key: world[key] for key in ("families", "members") if key in world})


def chosen_of(selections: Sequence[str | Path], methods: Sequence[str]) -> dict[str, dict]:
    """Each method's validation-chosen settings from its selection files (``{}`` when none chose)."""
    chosen: dict = {}
    for path in selections:
        chosen |= read_json(path).get("chosen", {})
    return {m: chosen.get(m, {}) for m in methods}


def run_controls(backbone: str, manifest: str | Path, tasks: list[str], group: str, methods: list[str],
                 embeddings: dict[str, dict], families: dict[str, str], class_names: Sequence[str], template: str,
                 settings: dict[str, dict], repository: str | Path, cvae_dirs: list[str | Path], prior, sampling,
                 lora, out: str | Path, seed: int = 0, threads: int | None = None, device: str = "auto",
                 cache: str | Path | None = None, gallery: int = 0) -> dict:
    """Embed the controls' descriptions, build each method's candidates under each control
    and evaluate them: ``out/descriptions.json``, ``out/candidates/<control>/<method>.safetensors``,
    ``out/metrics/<control>/<method>/<task>.json`` (as 'sglora evaluate' writes them).
    ``settings``: method -> its validation-chosen settings; ``prior``, ``sampling``: the run's."""
    from ..backbone.clip import encode_texts, load_clip
    from ..generator.candidates import save_candidates
    from ..devices import pick_device
    from ..evaluation.scoring import evaluate_method
    from ..experts.repository import Repository
    from ..evaluation.method_selection import TrainedCVAEs, method_candidates

    if prior.modality != "textual":
        raise SGLoraError(f"controls: prior.modality is {prior.modality!r}; the description controls change the "
                          "text condition, so they need the textual prior")
    unknown = [m for m in methods if m not in CONTROLLED]
    if unknown or not methods:
        raise SGLoraError(f"controls: methods {list(methods)}; expected some of {list(CONTROLLED)}")
    texts = control_descriptions(tasks, embeddings, families, class_names, template, seed, group)
    donors = derangement(tasks, families, group)
    model, processor = load_clip(backbone, device=pick_device(device))
    conditions = {"other_family": {t: embeddings[donors[t]]["text_embedding"] for t in tasks}}
    for control in ("own", "random_words", "bare_template", "paraphrase"):
        vecs = encode_texts(model, processor, [texts[control][t] for t in tasks]).numpy()
        conditions[control] = {t: vecs[i].astype(np.float32) for i, t in enumerate(tasks)}
    del model
    # the own descriptions, encoded here, must be the table's: the same backbone and encoder
    cos = min(float(conditions["own"][t] @ embeddings[t]["text_embedding"]) for t in tasks)
    if cos < 0.999:
        raise SGLoraError(f"controls: the backbone {backbone!r} embeds the tasks' own descriptions unlike the task "
                          f"embedding table (cosine {cos:.4f}); give the backbone that wrote the table")
    repo = Repository(repository)
    experts = repo.experts()
    cvaes = TrainedCVAEs(cvae_dirs) if "sglora" in methods else None
    with atomic_path(out, directory=True) as tmp:
        write_json(tmp / "descriptions.json", {"group": group, "tasks": list(tasks), "donors": donors,
                                               "descriptions": texts, "settings": settings})
        for control, method in ((c, m) for c in COMPUTED for m in methods):
            emb = {t: embeddings[t] | {"description": texts[control][t], "text_embedding": conditions[control][t]}
                   for t in tasks}
            vecs, info = method_candidates(method, settings.get(method, {}), list(tasks), experts, emb, prior,
                                           sampling, cvaes=cvaes if method == "sglora" else None)
            for t in info:
                info[t] |= {"settings": settings.get(method, {}), "control": control, "description": texts[control][t]}
            path = tmp / "candidates" / control / f"{method}.safetensors"
            save_candidates(path, vecs, repo.layout, method, info, bound=experts.norm_bound, scaling=repo.lora.scaling)
            evaluate_method(backbone, manifest, list(tasks), method, tmp / "metrics" / control / method, path,
                            lora=lora, group=group, threads=threads, device=device, cache=cache, gallery=gallery)
    return {"group": group, "methods": list(methods), "controls": list(COMPUTED), "tasks": len(tasks)}


# --- the table ---------------------------------------------------------------------------

def paired_difference(control: list[np.ndarray], own: list[np.ndarray], method: str, families: list | None = None,
                      n_boot: int | None = None, seed: int = 0):
    """A control minus (a) for one method and metric, with its paired 95% interval.

    ``control``, ``own``: :func:`sglora.evaluation.stats.run_hits` of the two (the same tasks, test
    queries and runs). Both share every draw of :func:`sglora.evaluation.stats.bootstrap`: families,
    tasks and queries as in the paired tables, and the runs too, since a control reuses the
    method's runs (the same CVAE and sampling seeds). The bootstrap is linear in the hits, so
    this is the bootstrap of the per-query differences under the method's own run stream."""
    from ..evaluation.stats import N_BOOT, bootstrap, estimate, interval

    diff = [c - o for c, o in zip(control, own)]
    reps = bootstrap({method: diff}, N_BOOT if n_boot is None else n_boot, seed, families=families)[method]
    return interval(estimate(diff), reps)


def controls_rows(own: dict[str, dict[str, dict]], controls: dict[str, dict[str, dict[str, dict]]],
                  families: dict[str, str] | None = None, n_boot: int | None = None, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Rows ``{method, control, label, <metric>, _lo, _hi, _se, and where not (a): <metric>_diff,
    _diff_lo, _diff_hi, _diff_se, _diff_mdd}`` and the metric columns. ``own``: method -> task
    -> ``<task>.json`` of (a); ``controls``: control -> method -> task -> ``<task>.json``;
    ``families``: task -> family (None: the task bootstrap)."""
    from ..methods import label
    from ..evaluation.stats import N_BOOT, family_labels, group_stats, run_hits
    from .tables import metric_cols

    n_boot = N_BOOT if n_boot is None else n_boot
    cols = metric_cols(own)
    tasks = list(next(iter(own.values())))
    fams = family_labels(families, tasks) if families is not None else None
    results = {(m, "own"): own[m] for m in own}
    results |= {(m, c): controls[c][m] for c in COMPUTED for m in own}
    keys = {k: f"{k[0]}/{k[1]}" for k in results}
    rows = {k: {"method": k[0], "control": k[1], "label": f"{label(k[0])}: {CONTROLS[k[1]]}"} for k in results}
    for col in cols:
        stats = group_stats({keys[k]: v for k, v in results.items()}, col, n_boot, seed, families)
        hits = {k: run_hits(v, col, k[0]) for k, v in results.items()}
        for k in results:
            iv = stats.interval(keys[k])
            rows[k].update({col: iv.estimate, f"{col}_lo": iv.lo, f"{col}_hi": iv.hi, f"{col}_se": iv.se})
            if k[1] != "own":
                d = paired_difference(hits[k], hits[(k[0], "own")], k[0], fams, n_boot, seed)
                rows[k].update({f"{col}_diff": d.estimate, f"{col}_diff_lo": d.lo, f"{col}_diff_hi": d.hi,
                                f"{col}_diff_se": d.se, f"{col}_diff_mdd": d.detectable})
    order = [(m, c) for m in CONTROLLED if m in own for c in CONTROLS]
    return [rows[k] for k in order], cols


CRITERION = ("Semantics drive a method where (b) another family's description, (c) random world words and (d) the "
             "bare template all score clearly below (a) its own description (paired interval minus (a) wholly below "
             "0) and (e) a paraphrase does not.")


def semantics_verdict(rows: list[dict], method: str, col: str) -> str:
    """Whether ``rows`` show the :data:`CRITERION` for ``method`` on ``col``, in words."""
    from ..methods import label
    from .tables import COL_NAMES

    mine = {r["control"]: r for r in rows if r["method"] == method}
    below = {c: mine[c][f"{col}_diff_hi"] < 0 for c in COMPUTED}
    shown = all(below[c] for c in BELOW) and not below["paraphrase"]
    parts = [f"{CONTROLS[c].split(' ')[0]} {'below' if below[c] else 'not below'}" for c in COMPUTED]
    return f"{label(method)}, {COL_NAMES[col]}: {', '.join(parts)} (a): {'shown' if shown else 'not shown'}."


def render_controls(rows: list[dict], cols: list[str], title: str, resampled: str,
                    descriptions: dict | None = None) -> dict[str, str]:
    """CSV (every column) and Markdown (scores, then each control minus (a)) of :func:`controls_rows`."""
    from .tables import COL_NAMES, WIDENED, _cell, _cells_caption, primary_cols

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    score = [f"{c}{x}" for c in cols for x in ("", "_lo", "_hi", "_se")]
    diff = [f"{c}_diff{x}" for c in cols for x in ("", "_lo", "_hi", "_se", "_mdd")]
    w.writerow(["method", "control", "label"] + score + diff)
    for r in rows:
        w.writerow([r["method"], r["control"], r["label"]] + [f"{r[k]:.4f}" if k in r else "" for k in score + diff])
    head = "| Method: condition | " + " | ".join(COL_NAMES[c] for c in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    md = [f"**{title}: description controls**", "", CRITERION, ""]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    md += ["Here: " + " ".join(semantics_verdict(rows, m, c) for m in methods for c in primary_cols(cols)), ""]
    md += [head, rule] + [f"| {r['label']} | " + " | ".join(_cell(r, c) for c in cols) + " |" for r in rows]
    md += ["", _cells_caption(resampled), ""]
    md += [f"**{title}: each control minus (a)**", "", head, rule]
    for r in rows:
        if r["control"] == "own":
            continue
        md.append(f"| {r['label']} − (a) | " + " | ".join(
            f"{r[f'{c}_diff']:+.2f} [{r[f'{c}_diff_lo']:+.2f}, {r[f'{c}_diff_hi']:+.2f}]"
            + ("*" if r[f"{c}_diff_lo"] > 0 or r[f"{c}_diff_hi"] < 0 else "") + f" (MDD {r[f'{c}_diff_mdd']:.2f})"
            for c in cols) + " |")
    md += ["", f"Cells: the control's mean minus (a)'s [paired 95% bootstrap interval, {WIDENED}; resampled: "
           f"{resampled}; the same draws for the control and (a), runs included: a control reuses the method's runs "
           "(CVAE and sampling seeds)]. *: the interval excludes 0. MDD: the minimum detectable difference (80% "
           "power, 5% level)."]
    if descriptions:
        first = descriptions["tasks"][0]
        md += ["", f"Descriptions of {first}: " + "; ".join(
            f"{CONTROLS[c].split(' ')[0]} \"{descriptions['descriptions'][c][first]}\"" for c in CONTROLS) + "."]
    return {"csv": buf.getvalue(), "md": "\n".join(md) + "\n"}


def write_controls_table(own: dict[str, str | Path], folder: str | Path, group: str, tasks: list[str],
                         families: dict[str, str] | None, title: str, markdown: str | Path, csv_path: str | Path,
                         n_boot: int | None = None, seed: int = 0) -> list[dict]:
    """``<group>.controls.{md,csv}`` from (a)'s metric folders (``own``: method -> folder) and
    :func:`run_controls`'s ``folder``; every file checked as the tables check it."""
    from ..evaluation.stats import resampling
    from .tables import load_group, write_all

    methods = [m for m in CONTROLLED if m in own]
    base = {m: load_group({f"{group}/{m}": own[m]}, group, [m], tasks)[m] for m in methods}
    folder = Path(folder)
    ctrl = {c: {m: load_group({f"{group}/{m}": folder / "metrics" / c / m}, group, [m], tasks)[m] for m in methods}
            for c in COMPUTED}
    rows, cols = controls_rows(base, ctrl, families, n_boot, seed)
    fams = [families[t] for t in tasks] if families is not None else None
    text = render_controls(rows, cols, title, resampling(fams, len(tasks)), read_json(folder / "descriptions.json"))
    out_md, out_csv = Path(markdown), Path(csv_path)
    if out_md.parent != out_csv.parent:
        raise SGLoraError(f"controls table: {out_md} and {out_csv} must be in one folder")
    write_all(out_md.parent, {out_md.name: text["md"], out_csv.name: text["csv"]})
    return rows


__all__ = ["CONTROLS", "COMPUTED", "CONTROLLED", "BELOW", "CRITERION", "bare_template", "paraphrase_template",
           "world_words", "random_description", "derangement", "control_descriptions", "run_controls",
           "paired_difference", "controls_rows", "semantics_verdict", "render_controls", "write_controls_table"]
