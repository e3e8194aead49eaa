"""LoRA spaces (sglora/baselines/merging_spaces.py): the product-space merges against plain references,
and a rank-K·r adapter that PEFT loads with the weighted average of the updates."""

from __future__ import annotations

import numpy as np
import pytest

from sglora.experts.lora import Layout, LoraSpec, delta_weights, merged, save_adapter
from sglora.baselines.merging_spaces import adapter_spec, layout_rank, pad_rank, product_merge, svd_merge, with_rank


def toy_layout(modules=("m.q_proj", "m.v_proj"), out_dim=6, in_dim=5, r=2) -> Layout:
    keys, shapes = [], []
    for mod in modules:
        keys += [f"base_model.model.{mod}.lora_A.weight", f"base_model.model.{mod}.lora_B.weight"]
        shapes += [(r, in_dim), (out_dim, r)]
    return Layout(keys, shapes)


def reference_average(vectors, weights, layout, scaling):
    """Σ_k w_k s B_k A_k per module, with plain loops."""
    out = {}
    for v, w in zip(vectors, weights):
        for mod, d in delta_weights(v, layout, scaling).items():
            out[mod] = out.get(mod, 0) + w * d.double().numpy()
    return out


def test_product_merge_is_the_weighted_average_of_the_updates():
    rng = np.random.default_rng(0)
    layout = toy_layout()
    vecs = rng.normal(size=(3, layout.dim)).astype(np.float32)
    w = np.array([0.5, 0.3, 0.2])
    v, lay = product_merge(vecs, w, layout)
    assert layout_rank(lay) == 6 and lay.dim == 3 * layout.dim
    got = delta_weights(v, lay, 2.0)
    ref = reference_average(vecs, w, layout, 2.0)
    for mod in ref:
        np.testing.assert_allclose(got[mod].numpy(), ref[mod], rtol=1e-5, atol=1e-5)


def test_svd_merge_is_the_truncated_svd_of_the_average():
    rng = np.random.default_rng(1)
    layout = toy_layout()
    vecs = rng.normal(size=(4, layout.dim)).astype(np.float32)
    w = np.full(4, 0.25)
    v = svd_merge(vecs, w, layout)
    ref = reference_average(vecs, w, layout, 1.0)
    got = delta_weights(v, layout, 1.0)
    for mod, d in ref.items():
        U, S, Vt = np.linalg.svd(d)
        np.testing.assert_allclose(got[mod].numpy(), (U[:, :2] * S[:2]) @ Vt[:2], rtol=1e-4, atol=1e-5)
    # one expert: the same update (other factors)
    one = svd_merge(vecs[:1], [1.0], layout)
    for mod, d in delta_weights(vecs[0], layout, 1.0).items():
        np.testing.assert_allclose(delta_weights(one, layout, 1.0)[mod].numpy(), d.numpy(), rtol=1e-4, atol=1e-5)


def test_pad_rank_keeps_the_update():
    rng = np.random.default_rng(2)
    layout = toy_layout()
    v = rng.normal(size=layout.dim).astype(np.float32)
    p, lay = pad_rank(v, layout, 5)
    assert lay == with_rank(layout, 5)
    for mod, d in delta_weights(v, layout, 1.5).items():
        np.testing.assert_allclose(delta_weights(p, lay, 1.5)[mod].numpy(), d.numpy(), atol=1e-6)


def test_rank_kr_adapter_loads_in_peft_and_merges_to_the_average(tiny_clip, tmp_path):
    from peft import PeftModel

    from sglora.backbone.clip import load_clip
    from conftest import initial_lora as initial_vector

    spec = LoraSpec()
    base, _ = load_clip(tiny_clip)
    _, layout = initial_vector(base, spec)
    rng = np.random.default_rng(3)
    vecs = (0.05 * rng.normal(size=(3, layout.dim))).astype(np.float32)
    w = np.array([0.6, 0.3, 0.1])
    v, lay = product_merge(vecs, w, layout)
    out = save_adapter(tmp_path / "adapter", v, lay, adapter_spec(spec, lay), tiny_clip)
    ref = reference_average(vecs, w, layout, spec.scaling)
    before = {n: p.detach().clone() for n, p in load_clip(tiny_clip)[0].named_parameters()}
    model = PeftModel.from_pretrained(load_clip(tiny_clip)[0], str(out)).merge_and_unload()
    after = dict(model.named_parameters())
    for mod, d in ref.items():
        delta = (after[f"{mod}.weight"] - before[f"{mod}.weight"]).detach().double().numpy()
        np.testing.assert_allclose(delta, d, rtol=1e-4, atol=1e-6)
    # evaluation merges the candidate with the run's scaling and its own layout: the same update
    with merged(base, v, lay, spec.scaling):
        for mod, d in ref.items():
            got = (base.get_submodule(mod).weight - before[f"{mod}.weight"]).detach().double().numpy()
            np.testing.assert_allclose(got, d, rtol=1e-4, atol=1e-6)


def test_factor_space_is_the_paper_merge(tiny_repo, tiny_embeddings):
    from sglora.baselines.merging import merge
    from sglora.backbone.embed import read_embeddings
    from sglora.generator.sampling import PriorSpec
    from sglora.experts.repository import Repository
    from sglora.baselines.merging_spaces import space_candidates

    repo = Repository(tiny_repo)
    experts, emb = repo.experts(), read_embeddings(tiny_embeddings)
    prior = PriorSpec(k=2, tau=0.05)
    for method in ("model_soups", "adaptersoup", "topk_weighted"):
        vecs, lay, _ = space_candidates(method, "factors", ["calla_lily"], experts, repo.layout, emb, prior)
        ref, _ = merge(method, experts, emb["calla_lily"]["text_embedding"], "textual", 2, 0.05)
        assert lay == repo.layout and vecs["calla_lily"][0].tobytes() == ref.tobytes()
        pv, play, _ = space_candidates(method, "product", ["calla_lily"], experts, repo.layout, emb, prior)
        k = 4 if method == "model_soups" else 2
        assert layout_rank(play) == k * layout_rank(repo.layout)


@pytest.mark.parametrize("bad", ["weights", "space"])
def test_errors_name_the_problem(bad):
    from sglora.io import SGLoraError
    from sglora.baselines.merging_spaces import merge_in_space

    layout = toy_layout()
    with pytest.raises(SGLoraError, match="product merge" if bad == "weights" else "space"):
        if bad == "weights":
            product_merge(np.zeros((2, layout.dim)), [1.0], layout)
        else:
            merge_in_space("topk_weighted", "bogus", None, layout, np.zeros(3), "textual", 1, 0.1)


def test_frozen_a_trains_only_b_and_its_factor_average_is_the_update_average(tiny_world, tiny_clip, tmp_path):
    """training.freeze_a: every snapshot keeps A at the shared init, B moves; averaging such
    LoRAs' factors is averaging their updates (the frozen_a space)."""
    import json

    from conftest import TINY_TRAIN
    from sglora.backbone.clip import load_clip
    from sglora.experts.training import TrainSpec, read_snapshots, train_lora
    from conftest import initial_lora as initial_vector
    from sglora.baselines.merging_spaces import factor_pairs

    spec = LoraSpec()
    snaps = {}
    for task in ("scottish_terrier", "tiger_lily"):
        train_lora(tiny_clip, tiny_world / "manifest.parquet", task, tmp_path / task, spec,
                   TrainSpec.from_dict({**TINY_TRAIN, "freeze_a": True}), threads=1, progress=False)
        snaps[task], layout = read_snapshots(tmp_path / task)
        assert json.loads((tmp_path / task / "training.json").read_text())["training"]["freeze_a"] is True
    init, _ = initial_vector(load_clip(tiny_clip)[0], spec)
    a_idx = [i for _, a, _ in factor_pairs(layout) for i in range(layout.offsets[a], layout.offsets[a] + layout.sizes[a])]
    for s in snaps.values():
        assert np.array_equal(s[:, a_idx], np.tile(init[a_idx], (len(s), 1)))
        assert not np.allclose(s[-1], init)
    two = np.stack([snaps["scottish_terrier"][-1], snaps["tiger_lily"][-1]])
    mean = two.mean(0)
    ref = reference_average(two, [0.5, 0.5], layout, spec.scaling)
    for mod, d in delta_weights(mean, layout, spec.scaling).items():
        np.testing.assert_allclose(d.double().numpy(), ref[mod], rtol=1e-4, atol=1e-7)


def test_factors_training_json_has_no_freeze_a_key(tiny_experts):
    import json

    info = json.loads((next(iter(tiny_experts.values())) / "training.json").read_text())
    assert "freeze_a" not in info["training"]


def test_space_table_rows_follow_the_method_and_space_order(tmp_path):
    """The selection JSON is key-sorted; the table lists methods and spaces in their own order,
    each space with its paired difference to the factor space."""
    import json

    from sglora.analyses.space_comparison import space_table

    rng = np.random.default_rng(4)
    ranks = {d: rng.integers(1, 6, size=(1, 10)).tolist() for d in ("i2t", "t2i")}
    chosen = {"topk_weighted": {"factors": {"k": 1}, "product": {"k": 2}}, "model_soups": {"factors": {}, "product": {}}}
    for m, by in chosen.items():
        for s in by:
            d = tmp_path / f"{m}.{s}"
            d.mkdir()
            (d / "t.json").write_text(json.dumps({"kind": "retrieval", "n": 1, "ranks": ranks,
                                                   "mean": {"i2t_r1": 0.0, "t2i_r1": 0.0}}))
    scores = {m: {s: [{"settings": v, "score": 1.0}] for s, v in by.items()} for m, by in chosen.items()}
    md = space_table(tmp_path, {"chosen": dict(sorted(chosen.items())), "scores": scores}, ["t"], "T", n_boot=50)["md"]
    rows = [ln for ln in md.splitlines() if ln.startswith("| Model") or ln.startswith("| Top")]
    assert [r.split(" | ")[:2] for r in rows] == [["| Model Soups", "factors"], ["| Model Soups", "product"],
                                                  ["| Top-K LoRA Weighted", "factors"], ["| Top-K LoRA Weighted", "product"]]
    assert rows[1].endswith("+0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] |") and rows[0].endswith("| - | - |")
    assert "| k=2 |" in rows[3]
