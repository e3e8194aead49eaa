"""The captioning step: work cut into resumable shards, the synthetic backend, and the
merge of the captions into the manifest (see :mod:`sglora.data.captioning`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ...io import SGLoraError, file_sha256, write_json, write_table
from ..manifest import read_manifest, write_manifest
from . import qwen2vl
from .config import CaptionOptions, parse_options
from .prompt import json_hash, prompt_spec

log = logging.getLogger("sglora.data.captioning")

PROVENANCE = pa.schema(
    [("caption_model", pa.string()), ("caption_prompt_hash", pa.string()), ("caption_seed", pa.int64())]
)
SHARD_SCHEMA = pa.schema(
    [("image_path", pa.string()), ("class_name", pa.string()), ("captions", pa.list_(pa.string()))]
    + list(PROVENANCE)
    + [("rejected", pa.int64())]
)


def _settings(backend: str, opts: CaptionOptions) -> dict:
    """What decides the captions: the shard folder is named by its hash. Device, dtype
    and batch size are left out so a shard made elsewhere still counts."""
    if backend == "synthetic":
        what = "caption option 'captions_file': Parquet with image_path, captions"
        return {"backend": backend, "captions_file_sha256": file_sha256(Path(opts.captions_file), what)}
    local = {"weights": _weights_sha256(opts.model)} if Path(opts.model).is_dir() else {}
    return {
        "backend": backend,
        "model": opts.model,
        **local,
        "prompt": prompt_spec(opts),
        "sampling": {
            k: getattr(opts, k)
            for k in (
                "captions_per_image", "temperature", "top_p", "max_new_tokens", "min_new_tokens", "seed",
                "min_words", "max_repeat_fraction", "max_retries", "min_pixels", "max_pixels",
            )
        },
    }  # fmt: skip


def _weights_sha256(folder: str) -> dict[str, str]:
    """A local checkpoint's weight files by content, so a model retrained in the same folder
    writes new shards instead of reusing the old model's (a hub id names fixed weights)."""
    return {p.name: file_sha256(p, "model weights") for p in sorted(Path(folder).glob("*.safetensors"))}


def _units(table: pa.Table, opts: CaptionOptions) -> list[tuple[str, str]]:
    """The (image_path, class_name) pairs to caption, sorted and without repeats (a COCO
    image in two tasks is captioned once per class it is asked about)."""
    units = set()
    for row in table.select(["image_path", "class_name", "captions", "split"]).to_pylist():
        if row["split"] in opts.splits and not (opts.keep_existing and row["captions"]):
            units.add((row["image_path"], row["class_name"]))
    return sorted(units)


def _caption_shard_synthetic(units, state, opts: CaptionOptions, shard_seed: int) -> list[dict]:
    lookup, file_hash = state
    rows = []
    for path, class_name in units:
        if path not in lookup:
            raise SGLoraError(
                f"{opts.captions_file}: no row with image_path {path!r}; expected captions for every manifest image"
            )
        rows.append(
            dict(image_path=path, class_name=class_name, captions=lookup[path], caption_model="synthetic",
                 caption_prompt_hash=file_hash, caption_seed=None, rejected=0)
        )  # fmt: skip
    return rows


def _synthetic_state(opts: CaptionOptions):
    path = Path(opts.captions_file)
    if not path.is_file():
        raise SGLoraError(f"{path}: file not found (caption option 'captions_file')")
    table = pq.read_table(path)
    for col in ("image_path", "captions"):
        if col not in table.column_names:
            raise SGLoraError(f"{path}: column {col!r} missing; expected columns image_path, captions")
    lookup = {}
    for i, row in enumerate(table.select(["image_path", "captions"]).to_pylist()):
        caps = row["captions"]
        if not isinstance(row["image_path"], str) or not isinstance(caps, list):
            raise SGLoraError(f"{path}: row {i}: expected image_path (string) and captions (list of strings)")
        lookup[row["image_path"]] = [str(c) for c in caps]
    return lookup, file_sha256(path)[:16]


def _folder(shard_dir: str | Path, settings: dict) -> Path:
    return Path(shard_dir) / json_hash(settings)


def shard_folder(shard_dir: str | Path, backend: str, options: dict) -> Path | None:
    """The folder under ``shard_dir`` that holds the shards of captioning with ``backend``
    and ``options`` (named by the hash of what decides the captions); ``None`` for backend none."""
    if backend == "none":
        return None
    return _folder(shard_dir, _settings(backend, parse_options(backend, options)))


def caption_manifest(
    manifest_in: Path, manifest_out: Path, backend: str, shard_dir: Path, **options
) -> dict:
    """Caption the images of ``manifest_in`` and write ``manifest_out``.

    The output is the input manifest with ``captions`` replaced for the captioned rows
    and three provenance columns (``caption_model``, ``caption_prompt_hash``,
    ``caption_seed``; null for rows left alone). Options: :class:`CaptionOptions`.
    Returns ``{images, shards, shards_done, shards_skipped, rejected, incomplete}``:
    ``rejected`` counts generations the filter threw away, ``incomplete`` lists the
    images left with fewer than ``captions_per_image`` captions after all retries.
    """
    from tqdm import tqdm

    opts = parse_options(backend, options)
    table = read_manifest(manifest_in)
    if backend == "none":  # same output columns, captions as the dataset gave them
        write_manifest(manifest_out, _merge(table, {}))
        return dict(images=0, shards=0, shards_done=0, shards_skipped=0, rejected=0, incomplete=[])
    units = _units(table, opts)
    settings = _settings(backend, opts)
    folder = _folder(shard_dir, settings)
    write_json(folder / "settings.json", settings)
    shards = [units[i : i + opts.shard_size] for i in range(0, len(units), opts.shard_size)]
    state = None
    done = skipped = 0
    results: dict[tuple[str, str], dict] = {}
    with tqdm(total=len(units), unit="img", desc=f"caption ({backend})", disable=not opts.progress) as bar:
        for index, shard in enumerate(shards):
            content = json_hash([list(u) for u in shard])
            path = folder / f"shard-{index:05d}-{content}.parquet"
            if path.is_file():
                rows = pq.read_table(path).to_pylist()
                skipped += 1
            else:
                if state is None:
                    state = _synthetic_state(opts) if backend == "synthetic" else qwen2vl.load_state(opts)
                fn = _caption_shard_synthetic if backend == "synthetic" else qwen2vl.caption_shard
                rows = fn(shard, state, opts, int(json_hash([opts.seed, content]), 16) % 2**31)
                write_table(path, pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
                done += 1
            for row in rows:
                results[(row["image_path"], row["class_name"])] = row
            bar.update(len(shard))
    wanted = opts.captions_per_image if backend == "qwen2vl" else 1  # synthetic: any caption will do
    incomplete = sorted({r["image_path"] for r in results.values() if len(r["captions"]) < wanted})
    rejected = sum(r["rejected"] for r in results.values())
    empty = sum(1 for r in results.values() if not r["captions"])
    if results and empty == len(results):
        raise SGLoraError(
            f"captioning {manifest_in}: the caption filter rejected every caption ({rejected} generations rejected "
            f"with min_words={opts.min_words}, max_repeat_fraction={opts.max_repeat_fraction}, "
            f"after {opts.max_retries} retries); {empty} of {len(results)} images have no caption. Loosen "
            "min_words / max_repeat_fraction, or check the captioning model"
        )
    out = _merge(table, results)
    write_manifest(manifest_out, out)
    _remove_other_settings(Path(shard_dir), folder)
    if incomplete:
        log.warning(
            "%d image(s) have fewer than %d valid captions after %d retries: %s",
            len(incomplete), wanted, opts.max_retries, ", ".join(incomplete[:20]),
        )  # fmt: skip
    summary = dict(
        images=len(units), shards=len(shards), shards_done=done, shards_skipped=skipped,
        rejected=rejected, incomplete=incomplete,
    )  # fmt: skip
    log.info("captioning summary: %s", {k: v for k, v in summary.items() if k != "incomplete"})
    return summary


def _remove_other_settings(shard_dir: Path, keep: Path) -> None:
    """After a complete run, drop the shard folders of earlier caption settings (each
    change of settings makes a new ``<hash>/`` folder); only folders this module wrote
    (with a ``settings.json``) are removed."""
    import shutil

    for folder in shard_dir.iterdir():
        if folder.is_dir() and folder != keep and (folder / "settings.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)


def _merge(table: pa.Table, results: dict[tuple[str, str], dict]) -> pa.Table:
    """The input manifest with captions and provenance filled from ``results``."""
    rows = table.to_pylist()
    captions, model, phash, seed = [], [], [], []
    for row in rows:
        hit = results.get((row["image_path"], row["class_name"]))
        captions.append(hit["captions"] if hit else row["captions"])
        model.append(hit["caption_model"] if hit else row.get("caption_model"))
        phash.append(hit["caption_prompt_hash"] if hit else row.get("caption_prompt_hash"))
        seed.append(hit["caption_seed"] if hit else row.get("caption_seed"))
    index = table.schema.get_field_index("captions")
    out = table.set_column(index, "captions", pa.array(captions, pa.list_(pa.string())))
    for fld, values in zip(PROVENANCE, (model, phash, seed)):
        column = pa.array(values, fld.type)
        if fld.name in out.column_names:
            out = out.set_column(out.schema.get_field_index(fld.name), fld, column)
        else:
            out = out.append_column(fld, column)
    return out
