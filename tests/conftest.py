"""Shared fixtures: a tiny world, a tiny random CLIP trained-tokenizer, tiny experts and
their repository. Real objects, built offline in seconds.

``--shuffle-seed N`` (or ``SGLORA_TEST_SHUFFLE=N``) runs the tests in a random order, seeded:
the test files in a shuffled order, and the tests within each file shuffled (a file's
tests stay together, so module fixtures are built once). No test may depend on another
having run before it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--shuffle-seed", type=int, default=None,
                     help="run the tests in a random order seeded with this (files shuffled, then the tests "
                          "within each file); the environment variable SGLORA_TEST_SHUFFLE does the same")


def _shuffle_seed(config) -> int | None:
    seed = config.getoption("--shuffle-seed")
    if seed is None and os.environ.get("SGLORA_TEST_SHUFFLE", "").strip():
        seed = int(os.environ["SGLORA_TEST_SHUFFLE"])
    return seed


def pytest_report_header(config):
    seed = _shuffle_seed(config)
    return None if seed is None else f"test order shuffled with seed {seed} (--shuffle-seed / SGLORA_TEST_SHUFFLE)"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    seed = _shuffle_seed(config)
    if seed is None:
        return
    rng = random.Random(seed)
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    files = list(by_file)
    rng.shuffle(files)
    shuffled = []
    for f in files:
        rng.shuffle(by_file[f])
        shuffled += by_file[f]
    items[:] = shuffled
TINY_CLASSES = ["scottish terrier", "boston terrier", "yorkshire terrier", "tiger lily", "water lily", "calla lily"]


def captioned_manifest(world_dir: Path) -> Path:
    """The world's raw manifest with its synthetic captions filled in."""
    from sglora.data.manifest import make_manifest, write_manifest

    caps = {r["image_path"]: r["captions"] for r in pq.read_table(world_dir / "captions.parquet").to_pylist()}
    rows = pq.read_table(world_dir / "manifest.raw.parquet").to_pylist()
    for r in rows:
        r["captions"] = list(caps[r["image_path"]])
    out = world_dir / "manifest.parquet"
    write_manifest(out, make_manifest(rows))
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from sglora.data.world import generate_world

    d = tmp_path_factory.mktemp("world")
    generate_world(d, TINY_CLASSES, images_per_class=12, test_per_class=4, image_size=32, progress=False)
    captioned_manifest(d)
    return d


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory, tiny_world) -> str:
    from sglora.backbone.tiny import save_tiny_clip

    texts = [c for r in pq.read_table(tiny_world / "captions.parquet").to_pylist() for c in r["captions"]]
    d = tmp_path_factory.mktemp("clip")
    save_tiny_clip(d, texts, image_size=32, patch_size=8, hidden_size=32, layers=2, heads=2, projection_dim=32)
    return str(d)


TINY_TRAIN = {"epochs": 3, "snapshots": 2, "lr": 0.01, "batch_size": 8, "seed": 0, "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory, tiny_world, tiny_clip) -> dict[str, Path]:
    from sglora.experts.training import TrainSpec, train_lora
    from sglora.experts.lora import LoraSpec

    root = tmp_path_factory.mktemp("loras")
    out = {}
    for task in ("scottish_terrier", "boston_terrier", "tiger_lily", "water_lily"):
        train_lora(tiny_clip, tiny_world / "manifest.parquet", task, root / task, LoraSpec(),
                   TrainSpec.from_dict(TINY_TRAIN), threads=1, progress=False)
        out[task] = root / task
    return out


@pytest.fixture(scope="session")
def tiny_embeddings(tmp_path_factory, tiny_world, tiny_clip) -> Path:
    from sglora.backbone.embed import embed_tasks

    out = tmp_path_factory.mktemp("emb") / "embeddings.parquet"
    embed_tasks(tiny_clip, {"world": tiny_world / "manifest.parquet"}, out)
    return out


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, tiny_experts, tiny_embeddings) -> Path:
    from sglora.backbone.embed import read_embeddings
    from sglora.experts.repository import assemble

    out = tmp_path_factory.mktemp("repo") / "repository"
    assemble(out, [{"task": t, "lora_dir": d} for t, d in tiny_experts.items()], read_embeddings(tiny_embeddings),
             progress=False)
    return out


def initial_lora(model, spec):
    """The shared initialisation of every LoRA of ``spec`` on ``model`` (a copy of it is
    wrapped): ``(vector, layout)``, the zero point of comparisons in the tests."""
    import copy

    from peft import get_peft_model_state_dict

    from sglora.experts.lora import Layout, add_lora

    peft_model = add_lora(copy.deepcopy(model), spec)
    layout = Layout.of(peft_model)
    return layout.to_vector(get_peft_model_state_dict(peft_model)), layout
