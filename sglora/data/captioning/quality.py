"""Caption quality on the embedded world: how often a caption states the truth about an image.

The world knows every image's class and attributes (``captions.parquet`` of
:func:`sglora.data.world.generate_world`), so a caption -- written by a model or by the
world itself -- can be checked word by word. For each attribute (the class name, colour,
texture, background, size, position, count) a caption *states* the values of that
attribute whose words it contains (whole words; longer names first, so "fire terrier lily"
is one class name, not "fire" and "terrier"; read left to right). It states the truth when it states the
image's value and no other; it is wrong when it states anything else; otherwise it leaves
the attribute out. Plain word matching: "dark blue" states the background "dark", and a
paraphrase ("crimson") states nothing -- the shares are what a reader of the words gets.

:func:`caption_quality` gives, per attribute, the share of captions that state the truth
and that are wrong, beside chance (one value of the world's drawn uniformly) and beside the
world's own (ground-truth) captions of the same images; :func:`rejected_share` is the share
of generations the caption filter threw away (:mod:`.shards`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ...io import SGLoraError

#: attribute -> the column of the world's captions.parquet that holds an image's value
ATTRIBUTES = ("class name", "colour", "texture", "background", "size", "position", "count")
_COLUMN = {"class name": "class_name", "colour": "colour", "texture": "texture", "background": "background",
           "size": "size", "position": "position", "count": "count"}


def attribute_vocabulary(class_names: list[str]) -> dict[str, list[str]]:
    """attribute -> every value a caption can state: the world's full tables (so a value the
    world does not draw still counts as stated, and wrong) and the given class names."""
    from ..world import ALL_BACKGROUNDS, ALL_TEXTURES, COLOURS, COUNTS, POSITIONS, SIZES

    return {"class name": sorted(set(class_names)), "colour": list(COLOURS), "texture": list(ALL_TEXTURES),
            "background": list(ALL_BACKGROUNDS), "size": list(SIZES), "position": list(POSITIONS),
            "count": list(COUNTS)}


class Statements:
    """What a caption states, for one vocabulary (attribute -> values)."""

    def __init__(self, vocabulary: dict[str, list[str]]):
        self.attributes = list(vocabulary)
        starts: dict[str, list[tuple[list[str], str, str]]] = {}
        for attribute, values in vocabulary.items():
            for value in values:
                words = value.lower().split()
                starts.setdefault(words[0], []).append((words, attribute, value))
        self._starts = {w: sorted(c, key=lambda t: -len(t[0])) for w, c in starts.items()}

    def __call__(self, caption: str) -> dict[str, set[str]]:
        """attribute -> the values ``caption`` states: whole words, case-insensitive, read
        left to right, the longest value that starts at a word taking its words."""
        words = re.findall(r"[a-z]+", caption.lower())
        out: dict[str, set[str]] = {a: set() for a in self.attributes}
        i = 0
        while i < len(words):
            for value_words, attribute, value in self._starts.get(words[i], ()):
                if words[i:i + len(value_words)] == value_words:
                    out[attribute].add(value)
                    i += len(value_words)
                    break
            else:
                i += 1
        return out


@dataclass(frozen=True)
class AttributeQuality:
    """One attribute's row: shares of captions (0..1)."""

    attribute: str
    values: int  #: distinct values among the images (chance = 1 / values)
    chance: float
    captions: int
    truth: float  #: states the image's value and no other
    wrong: float  #: states some other value
    truth_ground: float  #: the same share for the world's own captions of the same images


def _shares(images: list[tuple[dict, list[str]]], statements: Statements) -> dict[str, tuple[int, float, float]]:
    """attribute -> (captions, share stating the truth, share stating a wrong value)."""
    n, right, wrong = 0, dict.fromkeys(ATTRIBUTES, 0), dict.fromkeys(ATTRIBUTES, 0)
    for truth, captions in images:
        for caption in captions:
            said = statements(caption)
            n += 1
            for attribute in ATTRIBUTES:
                value = truth[_COLUMN[attribute]]
                right[attribute] += said[attribute] == {value}
                wrong[attribute] += bool(said[attribute] - {value})
    nan = float("nan")
    return {a: (n, right[a] / n if n else nan, wrong[a] / n if n else nan) for a in ATTRIBUTES}


def caption_quality(manifest: str | Path, truth: str | Path) -> list[AttributeQuality]:
    """Per attribute, how often the captions of ``manifest`` (the caption step's output)
    state the truth about their image, its images' values read from the world's
    ``truth`` table (captions.parquet: image_path, captions, class_name and the attributes)."""
    import pyarrow.parquet as pq

    from ..manifest import read_manifest

    table = pq.read_table(truth)
    missing = [c for c in ["image_path", "captions", *_COLUMN.values()] if c not in table.column_names]
    if missing:
        raise SGLoraError(f"{truth}: columns {missing} missing; expected the world's captions.parquet")
    truth_rows = {r["image_path"]: r for r in table.to_pylist()}
    model, ground = [], []
    for row in read_manifest(manifest).select(["image_path", "captions"]).to_pylist():
        t = truth_rows.get(row["image_path"])
        if t is None:
            raise SGLoraError(f"{manifest}: image {row['image_path']!r} has no row in {truth}; "
                              "the manifest and the world do not belong together")
        model.append((t, list(row["captions"] or [])))
        ground.append((t, list(t["captions"])))
    if not model:
        raise SGLoraError(f"{manifest}: no images")
    statements = Statements(attribute_vocabulary([t["class_name"] for t, _ in model]))
    of_model, of_ground = _shares(model, statements), _shares(ground, statements)
    rows = []
    for attribute in ATTRIBUTES:
        values = len({t[_COLUMN[attribute]] for t, _ in model})
        n, truth_share, wrong = of_model[attribute]
        rows.append(AttributeQuality(attribute, values, 1 / values, n, truth_share, wrong, of_ground[attribute][1]))
    return rows


def rejected_share(shard_folder: str | Path | None) -> tuple[int, int]:
    """``(rejected, generated)``: generations the caption filter threw away, and all
    generations (kept captions + rejected), over the shards of one captioning run;
    ``(0, 0)`` without shards (backend none)."""
    import pyarrow.parquet as pq

    if shard_folder is None or not Path(shard_folder).is_dir():
        return 0, 0
    rejected = kept = 0
    for path in sorted(Path(shard_folder).glob("shard-*.parquet")):
        for r in pq.read_table(path, columns=["captions", "rejected"]).to_pylist():
            rejected += r["rejected"] or 0
            kept += len(r["captions"] or [])
    return rejected, rejected + kept


def quality_table(datasets: dict[str, dict]) -> tuple[list[dict], str]:
    """CSV rows and Markdown of the caption quality of ``datasets``: name -> ``{manifest,
    truth, backend, model (the captioning model of backend qwen2vl), shards (its shard
    folder, for what the filter rejected)}``."""
    rows, lines = [], ["**Caption quality** (share of captions that state the truth about their image; "
                       "`sglora/data/captioning/quality.py`)", ""]
    for name, spec in datasets.items():
        quality = caption_quality(spec["manifest"], spec["truth"])
        backend = spec["backend"]
        rejected, generated = rejected_share(spec.get("shards")) if backend == "qwen2vl" else (0, 0)
        if backend == "qwen2vl":
            share = rejected / generated if generated else 0.0
            said = (f"captions by `{spec['model']}`; the caption filter rejected {rejected} of {generated} "
                    f"generations ({100 * share:.1f} %).")
        else:
            said = ("the world's own captions, looked up (backend `synthetic`): no model wrote them, so these "
                    "shares are the ceiling a captioner is measured against, not a result."
                    if backend == "synthetic" else f"the dataset's own captions (backend `{backend}`).")
        lines += [f"*{name}*: {said}", "",
                  "| attribute | values | chance | states the truth | states a wrong value | ground-truth captions |",
                  "|---|---:|---:|---:|---:|---:|"]
        for q in quality:
            rows.append({"dataset": name, "backend": backend, "model": spec.get("model") or "", **asdict(q),
                         "rejected": rejected, "generated": generated})
            lines.append(f"| {q.attribute} | {q.values} | {100 * q.chance:.1f} % | {100 * q.truth:.1f} % | "
                         f"{100 * q.wrong:.1f} % | {100 * q.truth_ground:.1f} % |")
        lines.append("")
    return rows, "\n".join(lines)
