"""The task manifest: one Parquet table, one row per image, that every later step reads.

Columns (all required):

- ``dataset``     the adapter that produced the row (``embedded``, ``coco``, ``pets`` ...)
- ``task``        safe task id (slug of ``task_name``); one task = one expert / unseen task
- ``task_name``   the class (or superclass) name as the dataset writes it
- ``class_name``  the image's class inside the task: equal to ``task_name`` for retrieval
                  tasks, the fine class for classification tasks (CIFAR-100 superclasses)
- ``description`` the task description T, from the dataset's default template
- ``image_path``  path of the image file (absolute, or relative to the working directory)
- ``captions``    list of caption strings (may be empty before captioning)
- ``split``       ``train`` or ``test``
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import SGLoraError, reading, write_table

SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("task", pa.string()),
        ("task_name", pa.string()),
        ("class_name", pa.string()),
        ("description", pa.string()),
        ("image_path", pa.string()),
        ("captions", pa.list_(pa.string())),
        ("split", pa.string()),
    ]
)
SPLITS = ("train", "test")
DEFAULT_TEMPLATE = "a photo of a <class name>"


def describe(name: str, template: str = DEFAULT_TEMPLATE, classes: list[str] | None = None) -> str:
    """Fill a description template. ``<class name>`` (or ``<superclass name>``) is the
    task's name; ``<classes>`` a comma-separated list of its fine classes."""
    if "<class name>" not in template and "<superclass name>" not in template:
        raise SGLoraError(
            f"description template {template!r} must contain '<class name>' or '<superclass name>'"
        )
    text = template.replace("<class name>", name).replace("<superclass name>", name)
    if "<classes>" in text:
        text = text.replace("<classes>", ", ".join(classes or []))
    return text


def make_manifest(rows: list[dict]) -> pa.Table:
    """Build a manifest table from row dicts, sorted by (task, split, image_path) so the
    file is byte-identical whatever order the adapter found the files in."""
    rows = sorted(rows, key=lambda r: (r["task"], r["split"], r["image_path"]))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    validate(table, "<new manifest>")
    return table


def validate(table: pa.Table, where: str) -> None:
    """Check a manifest table's columns, rows and splits; an error names ``where``."""
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise SGLoraError(f"{where}: manifest lacks the column(s) {missing}")
    if table.num_rows == 0:
        raise SGLoraError(f"{where}: manifest has no rows")
    bad = set(table.column("split").to_pylist()) - set(SPLITS)
    if bad:
        raise SGLoraError(f"{where}: field 'split' has {sorted(bad)}; expected one of {SPLITS}")
    names: dict[str, str] = {}
    for task, name in zip(table.column("task").to_pylist(), table.column("task_name").to_pylist()):
        if names.setdefault(task, name) != name:
            raise SGLoraError(
                f"{where}: task id {task!r} is given to two names, {names[task]!r} and {name!r}"
            )


def write_manifest(path: str | Path, table: pa.Table) -> None:
    """Validate and write a manifest table (Parquet, atomically)."""
    validate(table, str(path))
    write_table(path, table)


def read_manifest(path: str | Path, tasks: list[str] | None = None) -> pa.Table:
    """Read a manifest, optionally only some tasks (a filter pushed into the Parquet reader)."""
    path = Path(path)
    if not path.exists():
        raise SGLoraError(f"{path}: manifest not found")
    filters = [("task", "in", list(tasks))] if tasks else None
    with reading(path, "task manifest (Parquet)"):
        table = pq.read_table(path, filters=filters)
    if tasks:
        found = set(table.column("task").to_pylist())
        missing = [t for t in tasks if t not in found]
        if missing:
            raise SGLoraError(f"{path}: no rows for task(s) {missing}")
    validate(table, str(path))
    return table


def task_rows(table: pa.Table, task: str, split: str) -> list[dict]:
    """The rows of one task and split, as dicts, in file order."""
    return [r for r in table.to_pylist() if r["task"] == task and r["split"] == split]


def check_tasks(manifests: dict[str, str | Path], wanted: dict[str, dict[str, list[str]]]) -> dict:
    """Check, before any training, that every configured task exists in its dataset with
    captioned train and test images, that none of its captions is blank, and that none of
    its test images is one of its train images.

    ``wanted``: ``{config key: {dataset: [task, ...]}}`` (e.g. ``{"experts.tasks": {"world": [...]}}``).
    Returns ``{dataset: {task: {"train": n, "test": n}}}`` for every task of every manifest.
    """
    counts: dict[str, dict[str, dict[str, int]]] = {}
    blank: dict[str, Counter] = {}  # dataset -> task -> images with a blank caption
    images: dict[str, dict[str, dict[str, list[str]]]] = {}  # dataset -> task -> split -> image paths
    for dataset, path in manifests.items():
        table = read_manifest(path)
        per: dict[str, dict[str, int]] = {}
        blank[dataset], images[dataset] = Counter(), {}
        for task, split, caps, image in zip(table.column("task").to_pylist(), table.column("split").to_pylist(),
                                            table.column("captions").to_pylist(), table.column("image_path").to_pylist()):
            entry = per.setdefault(task, {"train": 0, "test": 0})
            if caps:
                entry[split] += 1
            blank[dataset][task] += any(not (c or "").strip() for c in caps or [])
            images[dataset].setdefault(task, {"train": [], "test": []})[split].append(image)
        counts[dataset] = per
    for key, by_dataset in wanted.items():
        for dataset, tasks in by_dataset.items():
            if dataset not in counts:
                raise SGLoraError(f"config {key}: dataset {dataset!r} has no manifest")
            have = counts[dataset]
            missing = [t for t in tasks if t not in have]
            if missing:
                raise SGLoraError(
                    f"config {key}: task(s) {missing} are not in dataset {dataset!r} "
                    f"({manifests[dataset]}); it has {len(have)} tasks, e.g. {sorted(have)[:8]}"
                )
            for t in tasks:
                empty = [s for s in SPLITS if have[t][s] == 0]
                if empty:
                    raise SGLoraError(
                        f"config {key}: task {t!r} of dataset {dataset!r} has no captioned {'/'.join(empty)} images "
                        f"in {manifests[dataset]}"
                    )
                if blank[dataset][t]:
                    raise SGLoraError(
                        f"config {key}: task {t!r} of dataset {dataset!r} has {blank[dataset][t]} image(s) with a blank "
                        f"caption in {manifests[dataset]}; expected text in every caption"
                    )
                train = set(images[dataset][t]["train"])
                leaked = sum(image in train for image in images[dataset][t]["test"])
                if leaked:
                    raise SGLoraError(
                        f"config {key}: task {t!r} of dataset {dataset!r} has {leaked} test image(s) that are also its "
                        f"train images in {manifests[dataset]}; expected disjoint train and test splits"
                    )
    return counts


def write_task_check(manifests: dict[str, str | Path], wanted: dict[str, dict[str, list[str]]], out: str | Path) -> dict:
    """:func:`check_tasks`, and write the images per split of the checked tasks only (so the
    file of one task's check does not change with the others); returns every task's counts."""
    from ..io import write_json

    counts = check_tasks(manifests, wanted)
    checked: dict[str, set] = {}
    for by in wanted.values():
        for d, tasks in by.items():
            checked.setdefault(d, set()).update(tasks)
    write_json(out, {d: {t: n for t, n in per.items() if t in checked.get(d, ())} for d, per in counts.items()})
    return counts
