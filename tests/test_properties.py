"""Property-based checks (Hypothesis) of the readers and the metric.

Every file kind the pipeline reads (Parquet tables, safetensors files, JSON, PEFT adapter
folders, dataset annotation files) is damaged at random: replaced by random bytes,
truncated, or one bit flipped. A reader then either still reads it (a flipped bit in the
data can leave a valid file) or stops with one SGLoraError naming the file: never another
exception, never a partial output. Small example counts keep this to seconds."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglora.io import SGLoraError

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DAMAGE = st.one_of(
    st.tuples(st.just("random"), st.binary(max_size=600)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
)


def damaged(data: bytes, damage) -> bytes:
    if damage[0] == "random":
        return damage[1]
    if damage[0] == "truncate":
        return data[: int(len(data) * damage[1])]
    pos = int(len(data) * damage[1])
    return data[:pos] + bytes([data[pos] ^ (1 << damage[2])]) + data[pos + 1 :]


# --- pristine inputs, built once -----------------------------------------------------------------

KEYS = ["base_model.model.m.lora_A.weight", "base_model.model.m.lora_B.weight"]


def _layout():
    from sglora.experts.lora import Layout

    return Layout(KEYS, [(2, 3), (3, 2)])


def _lora_dir(path: Path, task: str, seed: int) -> None:
    from sglora.io import save_safetensors, write_json

    layout = _layout()
    snaps = np.random.default_rng(seed).normal(size=(3, layout.dim)).astype(np.float32)
    save_safetensors(path / "snapshots.safetensors", {"snapshots": snaps}, {"layout": layout.to_json()})
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}")
    write_json(path / "training.json", {"lora": {"rank": 2}, "backbone": "some/model"})


def _embeddings(tasks) -> dict:
    rng = np.random.default_rng(0)
    return {t: {"task_name": t, "description": f"a photo of a {t}", "text_embedding": rng.normal(size=4),
                "visual_embedding": rng.normal(size=4)} for t in tasks}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One folder holding a sample of every file kind."""
    from test_datasets import write_cifar, write_coco, write_flickr, write_flowers, write_pets

    from sglora.generator.candidates import save_candidates
    from sglora.generator.cvae import CVAE, save_cvae
    from sglora.generator.settings import CVAESpec
    from sglora.io import write_table
    from sglora.experts.lora import LoraSpec, save_adapter
    from sglora.data.manifest import make_manifest, write_manifest
    from sglora.experts.repository import assemble

    root = tmp_path_factory.mktemp("pristine")
    for i, task in enumerate(["cat", "dog"]):
        _lora_dir(root / "loras" / task, task, i)
    assemble(root / "repository", [{"task": t, "lora_dir": root / "loras" / t} for t in ("cat", "dog")],
             _embeddings(["cat", "dog"]), progress=False)
    layout = _layout()
    save_candidates(root / "candidates.safetensors", {"cat": np.zeros((2, layout.dim))}, layout, "sglora")
    save_cvae(root / "cvae", CVAE(layout.dim, CVAESpec(latent=2, hidden=4, cond_dim=2)), {"prior": {"k": 1}})
    save_adapter(root / "adapter", np.ones(layout.dim), layout, LoraSpec(), "some/model")
    row = dict(dataset="d", task="cat", task_name="cat", class_name="cat", description="a photo of a cat",
               image_path="a.png", captions=["a cat"], split="train")
    write_manifest(root / "manifest.parquet", make_manifest([row, dict(row, image_path="b.png", split="test")]))
    emb = _embeddings(["cat"])["cat"]
    import pyarrow as pa

    write_table(root / "embeddings.parquet", pa.Table.from_pylist(
        [{"dataset": "d", "task": "cat", "task_name": "cat", "description": emb["description"],
          "text_embedding": emb["text_embedding"].astype(np.float32).tolist(),
          "visual_embedding": emb["visual_embedding"].astype(np.float32).tolist()}]))
    write_pets(root / "pets")
    write_coco(root / "coco")
    write_flickr(root / "flickr")
    write_flowers(root / "flowers")
    write_cifar(root / "cifar", n=4)
    return root


# --- readers: (file to damage, call that reads it, output that must not be left behind) ----------

def _read_repository(root: Path):
    from sglora.experts.repository import Repository

    repo = Repository(root / "repository")
    repo.experts()
    repo.expert("cat")
    list(repo.iter_snapshots())


def _assemble(root: Path):
    from sglora.experts.repository import assemble

    assemble(root / "new_repository", [{"task": t, "lora_dir": root / "loras" / t} for t in ("cat", "dog")],
             _embeddings(["cat", "dog"]), progress=False)


def _read_snapshots(root: Path):
    from sglora.experts.training import read_snapshots

    read_snapshots(root / "loras" / "cat")


def _load_candidates(root: Path):
    from sglora.generator.candidates import load_candidates

    load_candidates(root / "candidates.safetensors")


def _load_cvae(root: Path):
    from sglora.generator.cvae import load_cvae

    load_cvae(root / "cvae")


def _read_adapter(root: Path):
    from sglora.experts.lora import read_adapter

    read_adapter(root / "adapter")


def _read_manifest(root: Path):
    from sglora.data.manifest import read_manifest

    read_manifest(root / "manifest.parquet", ["cat"])


def _read_embeddings(root: Path):
    from sglora.backbone.embed import read_embeddings

    read_embeddings(root / "embeddings.parquet", "d")


def _pets(root: Path):
    from sglora.data.datasets import build_manifest

    build_manifest("pets", root / "pets")


def _coco(root: Path):
    from sglora.data.datasets import build_manifest

    build_manifest("coco", root / "coco")


def _flickr(root: Path):
    from sglora.data.datasets import build_manifest

    build_manifest("flickr30k", root / "flickr")


def _flowers(root: Path):
    from sglora.data.datasets import build_manifest

    build_manifest("flowers", root / "flowers")


def _cifar(root: Path):
    from sglora.data.datasets import build_manifest

    build_manifest("cifar100", root / "cifar", image_dir=str(root / "cifar" / "png"))


CASES = {
    "experts.parquet": ("repository/experts.parquet", _read_repository, None),
    "snapshots.parquet": ("repository/snapshots.parquet", _read_repository, None),
    "snapshots.safetensors (read)": ("loras/cat/snapshots.safetensors", _read_snapshots, None),
    "snapshots.safetensors (assemble)": ("loras/dog/snapshots.safetensors", _assemble, "new_repository"),
    "training.json (assemble)": ("loras/dog/training.json", _assemble, "new_repository"),
    "candidates.safetensors": ("candidates.safetensors", _load_candidates, None),
    "cvae model.safetensors": ("cvae/model.safetensors", _load_cvae, None),
    "cvae config.json": ("cvae/config.json", _load_cvae, None),
    "adapter_model.safetensors": ("adapter/adapter_model.safetensors", _read_adapter, None),
    "manifest.parquet": ("manifest.parquet", _read_manifest, None),
    "embeddings.parquet": ("embeddings.parquet", _read_embeddings, None),
    "pets list.txt": ("pets/annotations/list.txt", _pets, None),
    "pets trainval.txt": ("pets/annotations/trainval.txt", _pets, None),
    "coco captions json": ("coco/annotations/captions_val2017.json", _coco, None),
    "coco instances json": ("coco/annotations/instances_train2017.json", _coco, None),
    "flickr karpathy json": ("flickr/dataset_flickr30k.json", _flickr, None),
    "flowers setid.mat": ("flowers/setid.mat", _flowers, None),
    "cifar test pickle": ("cifar/cifar-100-python/test", _cifar, "cifar/png"),
}


@pytest.mark.parametrize("case", list(CASES))
@SETTINGS
@given(damage=DAMAGE)
def test_damaged_file_gives_one_error_naming_it(pristine, case, damage):
    target, read, output = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "copy"
        root.mkdir()
        top = Path(target).parts[0]
        if (pristine / top).is_dir():  # only the folder the reader needs
            shutil.copytree(pristine / top, root / top)
        else:
            shutil.copy(pristine / top, root / top)
        path = root / target
        path.write_bytes(damaged(path.read_bytes(), damage))
        try:
            read(root)
        except SGLoraError as err:
            message = str(err)
            assert "\n" not in message, message
            named = str(root) if case.startswith(("pets", "coco", "flickr", "flowers", "cifar")) else str(path)
            if case.startswith(("cvae", "adapter")) and str(path) not in message:
                named = str(path.parent)  # a folder's check names the folder
            assert named in message, message
            if output:
                assert not (root / output).exists(), "partial output left behind"
                assert not [p for p in root.iterdir() if p.name.endswith((".tmp", ".old"))]


# --- the metric ------------------------------------------------------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@SETTINGS
@given(n=st.integers(1, 5), per=st.integers(1, 3), data=st.data())
def test_recall_never_rewards_non_finite_scores(n, per, data):
    from sglora.evaluation.metrics import retrieval_recall

    sim = np.array(data.draw(st.lists(FLOATS, min_size=n * n * per, max_size=n * n * per))).reshape(n, n * per)
    owner = np.repeat(np.arange(n), per)
    if np.isfinite(sim).all():
        out = retrieval_recall(sim, owner)
        assert all(0 <= v <= 100 for v in out.values())
    else:
        with pytest.raises((SGLoraError, ValueError), match="non-finite"):
            retrieval_recall(sim, owner)


@SETTINGS
@given(n=st.integers(1, 6), k=st.integers(1, 4), data=st.data())
def test_accuracy_is_a_percentage_and_refuses_non_finite(n, k, data):
    from sglora.evaluation.metrics import accuracy

    sim = np.array(data.draw(st.lists(FLOATS, min_size=n * k, max_size=n * k))).reshape(n, k)
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    if np.isfinite(sim).all():
        assert 0 <= accuracy(sim, labels) <= 100
    else:
        with pytest.raises((SGLoraError, ValueError), match="non-finite"):
            accuracy(sim, labels)


@SETTINGS
@given(n=st.integers(1, 5), per=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_recall_matches_a_plain_reference(n, per, seed):
    """The vectorised metric against a loop written from the definition (pessimistic ties)."""
    from sglora.evaluation.metrics import retrieval_recall

    rng = np.random.default_rng(seed)
    sim = rng.integers(-2, 3, size=(n, n * per)).astype(float)  # many ties
    owner = np.repeat(np.arange(n), per)
    out = retrieval_recall(sim, owner, ks=(1, 2))
    for k in (1, 2):
        hits = 0
        for i in range(n):
            best = max(sim[i, j] for j in range(n * per) if owner[j] == i)
            hits += sum(sim[i, j] >= best for j in range(n * per) if owner[j] != i) < k
        assert out[f"i2t_r{k}"] == pytest.approx(100 * hits / n)
        hits = 0
        for j in range(n * per):
            hits += sum(sim[i, j] >= sim[owner[j], j] for i in range(n) if i != owner[j]) < k
        assert out[f"t2i_r{k}"] == pytest.approx(100 * hits / (n * per))


def test_damage_strategies_change_the_bytes():
    data = bytes(range(50))
    assert damaged(data, ("truncate", 0.5)) == data[:25]
    assert damaged(data, ("flip", 0.0, 0)) == b"\x01" + data[1:]
    assert json.loads(damaged(b'{"a": 1}', ("random", b'{"a": 2}'))) == {"a": 2}
