"""`sglora evaluate` merges candidates with the layout and the scaling stored beside them: a
`--lora` whose rank or alpha disagrees with them is an error naming the file, and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sglora.cli import main


@pytest.fixture(scope="module")
def rank2_candidates(tmp_path_factory, tiny_clip):
    """Oracle-like candidates of rank 2 with non-zero B factors (the scaling matters)."""
    from peft import get_peft_model_state_dict

    from sglora.backbone.clip import load_clip
    from sglora.generator.candidates import save_candidates
    from sglora.experts.lora import Layout, LoraSpec, add_lora

    model, _ = load_clip(tiny_clip)
    peft_model = add_lora(model, LoraSpec(rank=2, target_modules=["q_proj", "v_proj"]))
    layout = Layout.of(peft_model)
    v = layout.to_vector(get_peft_model_state_dict(peft_model))
    path = tmp_path_factory.mktemp("candidates") / "oracle.safetensors"
    save_candidates(path, {"calla_lily": v[None] + 0.3 * np.random.default_rng(0).normal(size=(1, layout.dim))},
                    layout, "oracle")
    return path


def evaluate(tiny_world, tiny_clip, candidates, out, lora: dict) -> int:
    return main(["evaluate", "--backbone", tiny_clip, "--manifest", str(tiny_world / "manifest.parquet"),
                 "--tasks", "calla_lily", "--method", "oracle", "--candidates", str(candidates),
                 "--lora", json.dumps(lora), "--out", str(out), "--device", "cpu"])


def test_a_lora_rank_other_than_the_candidates_layout_is_refused(tiny_world, tiny_clip, rank2_candidates, tmp_path,
                                                                   capsys):
    assert evaluate(tiny_world, tiny_clip, rank2_candidates, tmp_path / "wrong", {"rank": 4, "alpha": 4.0}) == 2
    err = capsys.readouterr().err
    assert f"{rank2_candidates}: the candidates' layout has LoRA rank 2, but lora.rank is 4" in err
    assert not (tmp_path / "wrong").exists()


def test_the_matching_lora_is_evaluated_with_its_scaling(tiny_world, tiny_clip, rank2_candidates, tmp_path):
    from sglora.evaluation.scoring import evaluate_method

    assert evaluate(tiny_world, tiny_clip, rank2_candidates, tmp_path / "m", {"rank": 2, "alpha": 4.0}) == 0
    got = json.loads((tmp_path / "m" / "calla_lily.json").read_text())["mean"]
    want = evaluate_method(tiny_clip, tiny_world / "manifest.parquet", ["calla_lily"], "oracle", tmp_path / "ref",
                           rank2_candidates, scaling=4.0 / 2, device="cpu")["calla_lily"]
    assert got == want


@pytest.fixture(scope="module")
def scaled_candidates(tmp_path_factory, rank2_candidates):
    """The same candidates, written with the scaling of their LoRAs (alpha 4, rank 2) recorded."""
    from sglora.generator.candidates import load_candidates, save_candidates

    vectors, layout, info = load_candidates(rank2_candidates)
    path = tmp_path_factory.mktemp("scaled") / "oracle.safetensors"
    save_candidates(path, vectors, layout, "oracle", info["info"], scaling=2.0)
    return path


def test_an_alpha_other_than_the_candidates_scaling_is_refused(tiny_world, tiny_clip, scaled_candidates, tmp_path,
                                                               capsys):
    # the rank matches the layout, the alpha does not: the scaling would silently change
    assert evaluate(tiny_world, tiny_clip, scaled_candidates, tmp_path / "wrong", {"rank": 2, "alpha": 8.0}) == 2
    err = capsys.readouterr().err
    assert f"{scaled_candidates}: the candidates were made with LoRA scaling 2 (alpha / rank), but --lora gives 4" in err
    assert not (tmp_path / "wrong").exists()


def test_the_stored_scaling_is_the_one_evaluated(tiny_world, tiny_clip, scaled_candidates, rank2_candidates, tmp_path):
    from sglora.evaluation.scoring import evaluate_method

    got = evaluate_method(tiny_clip, tiny_world / "manifest.parquet", ["calla_lily"], "oracle", tmp_path / "a",
                          scaled_candidates, device="cpu")["calla_lily"]
    want = evaluate_method(tiny_clip, tiny_world / "manifest.parquet", ["calla_lily"], "oracle", tmp_path / "b",
                           rank2_candidates, scaling=2.0, device="cpu")["calla_lily"]
    assert got == want


def test_the_pipelines_candidates_record_their_loras_scaling(tiny_repo, tiny_embeddings, tiny_experts, tmp_path):
    """The candidates step records the scaling of the LoRAs it draws on: the repository's for a
    merge, the trained folders' for the Oracle."""
    from sglora.generator.candidates import load_candidates
    from sglora.experts.training import read_lora_spec
    from sglora.experts.repository import Repository

    merged, oracle = tmp_path / "model_soups.safetensors", tmp_path / "oracle.safetensors"
    assert main(["candidates", "--method", "model_soups", "--tasks", "yorkshire_terrier", "--dataset", "world",
                 "--repository", str(tiny_repo), "--embeddings", str(tiny_embeddings), "--out", str(merged)]) in (0, None)
    assert main(["candidates", "--method", "oracle", "--tasks", "tiger_lily", "--loras", str(tiny_experts["tiger_lily"]),
                 "--out", str(oracle)]) in (0, None)
    scaling = Repository(tiny_repo).lora.scaling
    assert scaling == read_lora_spec(tiny_experts["tiger_lily"]).scaling
    assert load_candidates(merged)[2]["scaling"] == scaling
    assert load_candidates(oracle)[2]["scaling"] == scaling
