"""The ``sglora manifest`` and ``sglora caption`` subcommands (data preparation).

``register(subparsers)`` adds both to the main ``sglora`` parser; each handler takes the
parsed namespace, calls one library function and prints a one-line JSON summary, so a
Snakemake rule can log it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .io import SGLoraError, json_object

MANIFEST_HELP = """\
Build a task manifest (Parquet, one row per image) from a dataset in the layout its
authors distribute. Kinds: coco, pets, flowers, flickr30k, cifar100 (see
docs/datasets.md for the layouts). Adapter options come as repeated --option key=value
(value parsed as JSON when it parses, else taken as a string) or as one --config-json
object; --option wins over --config-json. Examples:

  sglora manifest --dataset pets --root data/oxford-iiit-pet --out results/pets.parquet \\
      --option max_images=50 --option 'breeds=["Birman","Pug"]'
  sglora manifest --dataset cifar100 --root data/cifar --out results/cifar.parquet \\
      --config-json '{"image_dir": "results/cifar_png", "max_images": 20}'
"""

CAPTION_HELP = """\
Fill the captions of a manifest. Backends: qwen2vl (in-context captioning, supplementary
Figure 6: instruction, two demonstrations, target), synthetic (captions read from the
Parquet file named by the option captions_file), none (keep the dataset's captions).
Work is split into shards under --shard-dir that a rerun skips, so an interrupted run
resumes. Options (one JSON object): model, demonstrations [{image, class_name, caption}],
captions_per_image, temperature, top_p, max_new_tokens, seed, shard_size, batch_size,
splits, min_words, max_repeat_fraction, max_retries, ... (all in docs/datasets.md).
Example:

  sglora caption --manifest results/pets.parquet --out results/pets_captioned.parquet \\
      --backend qwen2vl --shard-dir results/caption_shards \\
      --options-json '{"model": "Qwen/Qwen2-VL-7B-Instruct", "demonstrations": [...]}'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``manifest`` and ``caption`` subcommands to ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "manifest", help="build a task manifest from a dataset", description=MANIFEST_HELP, formatter_class=fmt
    )
    p.add_argument("--dataset", required=True, help="dataset kind: coco, pets, flowers, flickr30k, cifar100")
    p.add_argument("--root", required=True, help="folder the dataset was unpacked into")
    p.add_argument("--out", required=True, help="manifest Parquet file to write")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="one adapter option")
    p.add_argument("--config-json", default=None, help="adapter options as one JSON object")
    p.add_argument(
        "--image-dir", default=None,
        help="where adapters that write images (cifar100) put them; the option image_dir wins; others ignore it",
    )  # fmt: skip
    p.set_defaults(func=run_manifest)

    c = subparsers.add_parser(
        "caption", help="caption a manifest's images (Qwen2-VL or synthetic)", description=CAPTION_HELP,
        formatter_class=fmt,
    )  # fmt: skip
    c.add_argument("--manifest", required=True, help="input manifest Parquet")
    c.add_argument("--out", required=True, help="output manifest Parquet (captions + provenance columns)")
    c.add_argument(
        "--backend", required=True, choices=["qwen2vl", "synthetic", "none"],
        help="where captions come from (none: keep the dataset's captions, add provenance columns)",
    )  # fmt: skip
    c.add_argument("--shard-dir", required=True, help="folder for resumable caption shards")
    c.add_argument("--options-json", default="{}", help="captioning options as one JSON object")
    c.set_defaults(func=run_caption, device_of=caption_device)




def parse_option(text: str) -> tuple[str, Any]:
    """``"max_images=5"`` -> ``("max_images", 5)``; a value that is not JSON stays a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SGLoraError(f"--option {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def run_manifest(args: argparse.Namespace) -> int:
    from .datasets import adapter_options, bad_images, build_manifest
    from .manifest import write_manifest

    options = json_object(args.config_json, "--config-json")
    options.update(parse_option(o) for o in args.option)
    if args.image_dir and "image_dir" in adapter_options(args.dataset):
        options.setdefault("image_dir", args.image_dir)
    table = build_manifest(args.dataset, args.root, **options)
    write_manifest(args.out, table)
    summary = {
        "manifest": args.out,
        "rows": table.num_rows,
        "tasks": len(set(table.column("task").to_pylist())),
        "bad_images": bad_images(table),
    }
    print(json.dumps(summary), file=sys.stdout)
    return 0


def caption_device(args: argparse.Namespace) -> str | None:
    """The device setting of a Qwen2-VL captioning run (None: the other backends use none)."""
    from .captioning import parse_options

    if args.backend != "qwen2vl":
        return None
    return parse_options(args.backend, json_object(args.options_json, "--options-json")).device or "auto"


def run_caption(args: argparse.Namespace) -> int:
    from .captioning import caption_manifest

    options = json_object(args.options_json, "--options-json")
    summary = caption_manifest(args.manifest, args.out, args.backend, args.shard_dir, **options)
    print(json.dumps(summary), file=sys.stdout)
    return 0
