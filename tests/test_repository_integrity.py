"""Damaged or mismatched inputs of sampling are refused by name: a CVAE whose weights are
corrupt, a CVAE of another repository or with a corrupted config, a flipped bit in the
repository's Parquet, and candidates far outside the repository's range."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sglora.cli import main
from sglora.io import SGLoraError, save_safetensors

from test_generate_command import CVAE_SPEC, generate, one_error_line, run, tiny_cvae  # noqa: F401 (a fixture)

TASKS = ["scottish_terrier", "boston_terrier", "tiger_lily", "water_lily"]


def damage_cvae(src: Path, dst: Path, damage: str) -> Path:
    """A copy of the CVAE ``src`` at ``dst`` with one value of its decoder's output bias
    damaged: ``nan``, or ``exponent`` (the top exponent bit flipped: 0.05 becomes ~1e37)."""
    from safetensors import safe_open

    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    with safe_open(str(weights), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    bias = tensors["decoder.4.bias"]
    if damage == "nan":
        bias[0] = np.nan
    else:
        bias.view(np.uint32)[0] ^= np.uint32(1 << 30)
        assert np.isfinite(bias).all()
    save_safetensors(weights, tensors)
    return weights


@pytest.mark.parametrize("damage", ["nan", "exponent"])
def test_generate_refuses_what_a_damaged_cvae_decodes(capsys, tiny_repo, tiny_cvae, tmp_path, damage):
    weights = damage_cvae(tiny_cvae, tmp_path / "cvae", damage)
    rc, _, err = generate(capsys, tiny_repo, tmp_path / "cvae", "a photo of a terrier", "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, weights, "NaN" if damage == "nan" else "norm")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("damage", ["nan", "exponent"])
def test_pipeline_sampling_refuses_a_damaged_cvae(tiny_repo, tiny_embeddings, tiny_cvae, tmp_path, damage):
    from sglora.generator.candidates import sglora_candidates
    from sglora.generator.cvae import load_cvae
    from sglora.backbone.embed import read_embeddings
    from sglora.generator.settings import SamplingSpec
    from sglora.generator.settings import PriorSpec
    from sglora.experts.repository import Repository

    experts, emb = Repository(tiny_repo).experts(), read_embeddings(tiny_embeddings, "world")
    vecs, _ = sglora_candidates([load_cvae(tiny_cvae)[0]], ["calla_lily"], experts, emb, PriorSpec(k=2), SamplingSpec())
    assert np.linalg.norm(vecs["calla_lily"], axis=1).max() < experts.norm_bound  # a working CVAE's samples pass
    weights = damage_cvae(tiny_cvae, tmp_path / "cvae", damage)
    with pytest.raises(SGLoraError, match=str(weights)):
        sglora_candidates([load_cvae(tmp_path / "cvae")[0]], ["calla_lily"], experts, emb, PriorSpec(k=2), SamplingSpec())


def test_evaluate_refuses_a_candidate_far_outside_the_repository(capsys, tiny_world, tiny_clip, tiny_repo,
                                                                 tiny_embeddings, tmp_path):
    from safetensors import safe_open

    cands = tmp_path / "model_soups.safetensors"
    rc, _, err = run(capsys, "candidates", "--method", "model_soups", "--tasks", "calla_lily", "--dataset", "world",
                     "--repository", tiny_repo, "--embeddings", tiny_embeddings, "--out", cands)
    assert rc == 0, err
    evaluate = ["evaluate", "--backbone", tiny_clip, "--manifest", tiny_world / "manifest.parquet", "--tasks",
                "calla_lily", "--method", "model_soups", "--candidates", cands, "--threads", "1"]
    rc, _, err = run(capsys, *evaluate, "--out", tmp_path / "fine")
    assert rc == 0, err  # a merge of the repository's experts is in its range
    with safe_open(str(cands), "np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["calla_lily"][0, 5] = 1e30
    save_safetensors(cands, tensors, meta)
    rc, _, err = run(capsys, *evaluate, "--out", tmp_path / "metrics")
    assert rc == 2
    one_error_line(err, cands, "model_soups", "calla_lily", "norm")
    assert not (tmp_path / "metrics").exists()


def test_cvae_of_another_repository_of_the_same_size_is_refused(capsys, tiny_experts, tiny_embeddings, tiny_repo,
                                                                tiny_cvae, tmp_path):
    other = tmp_path / "other_repository"
    loras = [tiny_experts[t] for t in TASKS[:3]]
    rc, _, err = run(capsys, "assemble", "--loras", *loras, "--embeddings", tiny_embeddings, "--dataset", "world",
                     "--out", other)
    assert rc == 0, err
    rc, _, err = generate(capsys, other, tiny_cvae, "a dog", "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, tiny_cvae / "config.json", other / "experts.parquet", "another repository")
    assert not (tmp_path / "a").exists()
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a dog", "--out", tmp_path / "b")
    assert rc == 0, err  # its own repository, moved or not, passes
    moved = tmp_path / "moved"
    shutil.copytree(tiny_repo, moved)
    assert generate(capsys, moved, tiny_cvae, "a dog", "--out", tmp_path / "c")[0] == 0


@pytest.mark.parametrize("field,value", [("condition", "lool"), ("prior", {"k": 0}),
                                         ("repository_checksum", 12), ("sampling", {"temperature": -1})])
def test_corrupted_cvae_config_field_is_named(capsys, tiny_repo, tiny_cvae, tmp_path, field, value):
    cvae = tmp_path / "cvae"
    shutil.copytree(tiny_cvae, cvae)
    cfg = json.loads((cvae / "config.json").read_text())
    cfg[field] = value
    (cvae / "config.json").write_text(json.dumps(cfg))
    rc, _, err = generate(capsys, tiny_repo, cvae, "a dog", "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, cvae / "config.json", field)


def test_a_flipped_bit_in_the_expert_table_is_an_error_naming_it(tiny_repo, tmp_path):
    from sglora.experts.repository import Repository

    repo = tmp_path / "repository"
    shutil.copytree(tiny_repo, repo)
    path = repo / "experts.parquet"
    good, data = Repository(repo).experts(), path.read_bytes()
    meta = pq.ParquetFile(path).metadata
    chunk = next(meta.row_group(0).column(i) for i in range(meta.num_columns)
                 if meta.row_group(0).column(i).path_in_schema.startswith("mu"))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    errors = 0
    for pos in np.linspace(start, start + chunk.total_compressed_size - 1, 48).astype(int):
        flipped = bytearray(data)
        flipped[pos] ^= 0x08
        path.write_bytes(bytes(flipped))
        try:
            table = Repository(repo).experts()
        except SGLoraError as err:
            assert str(path) in str(err) and "\n" not in str(err)
            errors += 1
            continue
        assert np.array_equal(table.mu, good.mu) and np.array_equal(table.var, good.var), f"bit flipped at byte {pos}"
    assert errors > 0
