"""`sglora evaluate` merges candidates with the layout stored beside them: a `--lora` whose
rank disagrees with that layout is an error naming the file, and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sglora.cli import main


@pytest.fixture(scope="module")
def rank2_candidates(tmp_path_factory, tiny_clip):
    """Oracle-like candidates of rank 2 with non-zero B factors (the scaling matters)."""
    from peft import get_peft_model_state_dict

    from sglora.backbone import load_clip
    from sglora.candidates import save_candidates
    from sglora.lora import Layout, LoraSpec, add_lora

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
    from sglora.evaluate import evaluate_method

    assert evaluate(tiny_world, tiny_clip, rank2_candidates, tmp_path / "m", {"rank": 2, "alpha": 4.0}) == 0
    got = json.loads((tmp_path / "m" / "calla_lily.json").read_text())["mean"]
    want = evaluate_method(tiny_clip, tiny_world / "manifest.parquet", ["calla_lily"], "oracle", tmp_path / "ref",
                           rank2_candidates, scaling=4.0 / 2, device="cpu")["calla_lily"]
    assert got == want
