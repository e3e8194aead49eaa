"""Steps of workflow/rules/data.smk: the embedded world, manifests of real datasets, captions, task checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated as A

from ..io import SGLoraError
from .registry import SPLIT, Manifests, Threads, step

if TYPE_CHECKING:
    from ..data.captioning.pretrain import CaptionerSpec


@step("world")
def world(out: A[Path, "output folder"], seed: A[int, "world seed (family looks and images)"] = 0,
          options: A[dict, "JSON datasets.<name>.options: domain, classes, images_per_class, test_per_class, "
                           "image_size, template, families, members, bend"] = None) -> dict:
    """Generate one domain of the embedded benchmark's synthetic world (images, manifest, captions)."""
    import inspect

    from ..data.world import generate_world

    known = set(inspect.signature(generate_world).parameters) - {"out_dir", "seed", "progress"}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise SGLoraError(f"datasets.<name>.options of an embedded world: {unknown} are not options; "
                          f"expected some of {sorted(known)}")
    return generate_world(out, seed=seed, **(options or {}))


@step("manifest")
def manifest(dataset: A[str, "dataset kind: coco, pets, flowers, flickr30k, cifar100"],
             root: A[Path, "folder the dataset was unpacked into"], out: A[Path, "manifest Parquet file to write"],
             options: A[dict, "JSON datasets.<name>.options: the adapter's options (docs/datasets.md)"] = None,
             option: A[list[str], "one adapter option KEY=VALUE (JSON value, else a string); wins over --options",
                       {"metavar": "KEY=VALUE"}] = (),
             image_dir: A[Path | None, "where adapters that write images (cifar100) put them; the option image_dir "
                                       "wins; others ignore it"] = None) -> dict:
    """Build a task manifest (Parquet, one row per image) from a dataset in the layout its
    authors distribute (docs/datasets.md), e.g. ``sglora manifest --dataset pets --root
    data/oxford-iiit-pet --out pets.parquet --option max_images=50``."""
    from ..data.datasets import adapter_options, bad_images, build_manifest
    from ..data.manifest import write_manifest

    options = dict(options or {})
    options.update(parse_option(o) for o in option)
    if image_dir and "image_dir" in adapter_options(dataset):
        options.setdefault("image_dir", str(image_dir))
    table = build_manifest(dataset, str(root), **options)
    write_manifest(out, table)
    return {"manifest": str(out), "rows": table.num_rows, "tasks": len(set(table.column("task").to_pylist())),
            "bad_images": bad_images(table)}


def parse_option(text: str) -> tuple[str, object]:
    """``"max_images=5"`` -> ``("max_images", 5)``; a value that is not JSON stays a string."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SGLoraError(f"--option {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _caption_device(kw: dict) -> str | None:
    from ..data.captioning import parse_options

    if kw["backend"] != "qwen2vl":
        return None
    return parse_options(kw["backend"], kw["options"] or {}).device or "auto"


@step("caption", device=_caption_device)
def caption(manifest: A[Path, "input manifest Parquet"],
            out: A[Path, "output manifest Parquet (captions + provenance columns)"],
            backend: A[str, "where captions come from (none: keep the dataset's captions, add provenance columns)",
                       {"choices": ["qwen2vl", "synthetic", "none"]}],
            shard_dir: A[Path, "folder for resumable caption shards"],
            options: A[dict, "JSON datasets.<name>.captioner.options: model, demonstrations, captions_per_image, "
                             "temperature, ... (docs/datasets.md)"] = None) -> dict:
    """Fill the captions of a manifest. Backends: qwen2vl (in-context captioning,
    supplementary Figure 6: instruction, two demonstrations, target), synthetic (captions
    read from the Parquet file named by the option captions_file), none (keep the dataset's
    captions). Work is split into shards under --shard-dir that a rerun skips."""
    from ..data.captioning import caption_manifest

    return caption_manifest(manifest, out, backend, shard_dir, **(options or {}))


@step("pretrain-captioner")
def pretrain_captioner(worlds: A[list[Path], "world folders written by 'sglora world'"],
                       out: A[Path, "output folder (save_pretrained layout, with demonstrations.json)"],
                       pretrain: CaptionerSpec,
                       tasks: A[list[str], "tasks whose training images it learns from (comma-separated; "
                                           "default: every task of the worlds)", SPLIT] = (),
                       seed: A[int, "initialisation, data order and target captions"] = 0,
                       threads: Threads = None) -> dict:
    """Pretrain the embedded benchmark's Qwen2-VL captioner on the worlds' training images,
    prompted as supplementary Figure 6 prompts (instruction, demonstrations, query image);
    the caption step loads it like any Qwen2-VL checkpoint."""
    from ..data.captioning.pretrain import pretrain_captioner as train, training_examples

    examples = training_examples(worlds, list(tasks) or None)
    return train(out, examples, pretrain, seed=seed, threads=threads)


@step("check-tasks")
def check_tasks(manifest: Manifests, wanted: A[dict, 'JSON {"config key": {"dataset": ["task", ...]}}'],
                out: A[Path, "JSON summary: images per task and split"]) -> dict:
    """Check that every configured expert and evaluation task exists in its dataset with
    captioned train and test images, before any training starts."""
    from ..data.manifest import write_task_check

    counts = write_task_check({d: str(p) for d, p in manifest.items()}, wanted, out)
    return {d: len(t) for d, t in counts.items()}


@step("caption-quality")
def caption_quality(datasets: A[dict, 'JSON {"<dataset>": {"manifest": captioned manifest, "truth": the world\'s '
                                      'captions.parquet, "shard_dir": caption shards, "backend": ..., "options": {...}}}'],
                    out: A[Path, "CSV: one row per dataset and attribute"],
                    markdown: A[Path, "Markdown table (written beside --out, both or neither)"]) -> dict:
    """How often the captions of embedded worlds state the truth about their image, per
    attribute (class name, colour, texture, background, size, position, count), beside chance
    and the world's own captions; and the share of generations the caption filter rejected."""
    import csv
    import io

    from ..analyses.tables import write_all
    from ..data.captioning.config import DEFAULT_MODEL
    from ..data.captioning.quality import quality_table
    from ..data.captioning.shards import shard_folder

    if Path(out).parent != Path(markdown).parent:
        raise SGLoraError(f"caption-quality: {out} and {markdown} must be in one folder")
    specs = {}
    for name, spec in datasets.items():
        missing = [k for k in ("manifest", "truth", "backend") if k not in spec]
        if missing:
            raise SGLoraError(f"caption-quality --datasets: {name!r} lacks {missing}")
        backend, options = spec["backend"], spec.get("options") or {}
        model = options.get("model", DEFAULT_MODEL) if backend == "qwen2vl" else None
        shards = shard_folder(spec["shard_dir"], backend, options) if spec.get("shard_dir") else None
        specs[name] = {"manifest": spec["manifest"], "truth": spec["truth"], "backend": backend, "model": model,
                       "shards": shards}
    rows, text = quality_table(specs)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_all(Path(out).parent, {Path(out).name: buf.getvalue(), Path(markdown).name: text})
    return {"datasets": len(specs), "rows": len(rows)}
