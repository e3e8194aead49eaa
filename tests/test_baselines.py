"""The learned baselines on real tiny objects: a synthetic world, a random tiny CLIP, three
expert LoRAs trained on it and their repository. MoLE is checked against its formula
written out naively here; the DDPM against closed forms."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from sglora.backbone.clip import encode_images, encode_texts, load_clip
from sglora.baselines.mole import MoLESpec, attach_mole, balance_loss, detach_mole, load_mole
from sglora.baselines.pdiff import Diffusion, PDiffSpec, ParamAutoencoder, condition_vector, load_pdiff
from sglora.generator.candidates import load_candidates
from sglora.cli import build_parser, main
from sglora.backbone.embed import embed_tasks, read_embeddings
from sglora.evaluation.scoring import evaluate_method, load_task
from sglora.experts.training import TrainSpec, train_lora
from sglora.io import SGLoraError
from sglora.experts.lora import LoraSpec, merged
from sglora.data.manifest import make_manifest, write_manifest
from sglora.experts.repository import Repository, assemble
from sglora.backbone.tiny import save_tiny_clip
from sglora.data.world import generate_world

CLASSES = ["scottish terrier", "boston terrier", "tiger lily"]
PDIFF_SPEC = {"latent": 8, "ae_hidden": 64, "denoiser_hidden": 64, "denoiser_blocks": 2, "time_dim": 32,
              "ae_epochs": 300, "diffusion_epochs": 300, "T": 200, "samples": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A captioned 3-class world, a tiny CLIP, 3 experts (4 snapshots each), their repository."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("baselines")
    generate_world(root / "world", classes=CLASSES, images_per_class=12, test_per_class=4, image_size=32, progress=False)
    captions = {r["image_path"]: r["captions"] for r in pq.read_table(root / "world" / "captions.parquet").to_pylist()}
    rows = pq.read_table(root / "world" / "manifest.raw.parquet").to_pylist()
    for r in rows:
        r["captions"] = captions[r["image_path"]]
    manifest = root / "manifest.parquet"
    write_manifest(manifest, make_manifest(rows))
    texts = [c for caps in captions.values() for c in caps] + [r["description"] for r in rows]
    backbone = str(save_tiny_clip(root / "clip", texts, image_size=32))
    tasks = sorted({r["task"] for r in rows})
    for t in tasks:
        train_lora(backbone, manifest, t, root / "loras" / t, LoraSpec(),
                   TrainSpec(epochs=8, snapshots=4, batch_size=8, lr=1e-2), threads=1, progress=False)
    embed_tasks(backbone, {"world": manifest}, root / "embeddings.parquet")
    embeddings = read_embeddings(root / "embeddings.parquet")
    assemble(root / "repository", [{"task": t, "lora_dir": root / "loras" / t} for t in tasks], embeddings, progress=False)
    yield SimpleNamespace(root=root, backbone=backbone, manifest=manifest, tasks=tasks, embeddings=embeddings,
                          embeddings_path=root / "embeddings.parquet", repo=Repository(root / "repository"))
    torch.set_num_threads(threads)


def _randomize_gates(modules, seed=0, std=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in modules.values():
            for p in mod.gate_parameters():
                p.add_(torch.randn(p.shape, generator=gen) * std)


# --- MoLE -------------------------------------------------------------------------------


def test_mole_gate_is_the_papers_formula(world):
    experts = world.repo.experts()
    model, _ = load_clip(world.backbone)
    modules = attach_mole(model, experts.mu, world.repo.layout, world.repo.lora.scaling, temperature=0.7)
    assert list(modules) == world.repo.layout.modules()
    _randomize_gates(modules)
    x = torch.randn(3, 5, next(iter(modules.values())).base.in_features, generator=torch.Generator().manual_seed(1))
    for name, mod in modules.items():
        # naive reference: concatenate E_i(x) = s B_i A_i x, LayerNorm, linear, softmax(. / tau)
        layout = world.repo.layout
        outs = []
        for v in experts.mu:
            st = layout.to_state(v)
            a, b = st[f"base_model.model.{name}.lora_A.weight"], st[f"base_model.model.{name}.lora_B.weight"]
            outs.append(world.repo.lora.scaling * x @ a.T @ b.T)
        e = torch.stack(outs, -2)  # 3 x 5 x N x d_out
        flat = e.reshape(3, 5, -1)
        logits = F.linear(F.layer_norm(flat, (flat.shape[-1],), mod.ln_weight, mod.ln_bias, 1e-5),
                          mod.proj_weight, mod.proj_bias)
        g = torch.softmax(logits / 0.7, -1)
        with torch.no_grad():
            assert torch.allclose(mod.gates(x), g, atol=1e-5), name
            assert torch.allclose(mod.gates(x).sum(-1), torch.ones(3, 5), atol=1e-6)
            assert torch.allclose(mod(x), mod.base(x) + (g[..., None] * e).sum(-2), atol=1e-5), name
            assert (mod.gates(x).std(-1) > 0).all()  # the gate is not trivially uniform


def test_mole_with_identical_experts_equals_merging_that_expert(world):
    experts, layout, scaling = world.repo.experts(), world.repo.layout, world.repo.lora.scaling
    mu = experts.mu[1]
    data = load_task(world.manifest, world.tasks[0], load_clip(world.backbone)[1])
    reference, processor = load_clip(world.backbone)
    with merged(reference, mu, layout, scaling):
        img_ref = encode_images(reference, data.pixels)
        txt_ref = encode_texts(reference, processor, data.texts)
    base_img = encode_images(reference, data.pixels)

    gated, _ = load_clip(world.backbone)
    modules = attach_mole(gated, np.stack([mu, mu, mu]), layout, scaling)
    _randomize_gates(modules)  # whatever the gate says, a mixture of one LoRA is that LoRA
    assert torch.allclose(encode_images(gated, data.pixels), img_ref, atol=1e-5)
    assert torch.allclose(encode_texts(gated, processor, data.texts), txt_ref, atol=1e-5)
    assert not torch.allclose(base_img, img_ref, atol=1e-4)  # the expert does change the model

    mixed, _ = load_clip(world.backbone)
    modules = attach_mole(mixed, experts.mu, layout, scaling)
    _randomize_gates(modules)
    assert not torch.allclose(encode_images(mixed, data.pixels), img_ref, atol=1e-4)


def test_balance_loss_is_minus_log_product_of_mean_gates(world):
    experts = world.repo.experts()
    model, _ = load_clip(world.backbone)
    modules = attach_mole(model, experts.mu, world.repo.layout, world.repo.lora.scaling)
    n = len(experts.tasks)
    for mod in modules.values():
        mod.tracked = [torch.full((n,), 1.0 / n)]
    assert balance_loss(modules).item() == pytest.approx(n * math.log(n), rel=1e-6)
    mods = list(modules.values())
    mods[0].tracked = [torch.tensor([0.8, 0.1, 0.1])]
    mods[1].tracked = [torch.tensor([0.2, 0.5, 0.3])]
    for mod in mods[2:]:
        mod.tracked = []
    q = np.array([0.5, 0.3, 0.2])
    assert balance_loss(modules).item() == pytest.approx(-np.log(q).sum(), rel=1e-6)
    assert all(mod.tracked == [] for mod in mods)
    detach_mole(model, modules)
    assert all(type(model.get_submodule(name)) is torch.nn.Linear for name in modules)


def test_train_mole_decreases_the_loss_and_evaluate_mole_writes_evaluate_json(world, capsys):
    out = world.root / "mole"
    spec = {"epochs": 6, "lr": 0.01, "batch_size": 8, "balance_weight": 0.01}
    assert main(["train-mole", "--backbone", world.backbone, "--manifest", str(world.manifest),
                 "--tasks", ",".join(world.tasks), "--repository", str(world.repo.path), "--mole", json.dumps(spec),
                 "--out", str(out), "--threads", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["probe_after"]["loss"] < cfg["probe_before"]["loss"]
    assert cfg["experts"] == world.repo.experts().tasks and cfg["mole"] == {**MoLESpec().__dict__, **spec}
    state, vectors, layout, _ = load_mole(out)
    assert np.array_equal(vectors, world.repo.experts().mu) and layout == world.repo.layout
    assert any(state[k].abs().max() > 0 for k in state if k.endswith("proj_weight"))  # the gates moved

    assert main(["evaluate-mole", "--backbone", world.backbone, "--manifest", str(world.manifest),
                 "--tasks", ",".join(world.tasks[:2]), "--mole", str(out), "--group", "seen",
                 "--out", str(world.root / "metrics" / "mole")]) == 0
    evaluate_method(world.backbone, world.manifest, world.tasks[:1], "zeroshot", world.root / "metrics" / "zs",
                    group="seen")
    reference = json.loads((world.root / "metrics" / "zs" / f"{world.tasks[0]}.json").read_text())
    for task in world.tasks[:2]:
        res = json.loads((world.root / "metrics" / "mole" / f"{task}.json").read_text())
        assert set(res) == set(reference)
        assert (res["method"], res["group"], res["task"], res["kind"], res["n"]) == ("mole", "seen", task, "retrieval", 1)
        assert set(res["mean"]) == set(reference["mean"]) and len(res["per_sample"]) == 1
        assert sum(res["info"]["mean_gate_image"].values()) == pytest.approx(1.0, abs=1e-4)
    capsys.readouterr()


# --- DDPM -------------------------------------------------------------------------------


def test_ddpm_schedule_and_forward_process():
    d = Diffusion(T=1000, beta_start=1e-4, beta_end=2e-2)
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(2e-2)
    assert np.allclose(np.diff(d.betas.numpy()), (2e-2 - 1e-4) / 999)
    abar = np.cumprod(1 - np.linspace(1e-4, 2e-2, 1000))
    assert np.allclose(d.alphas_cumprod.numpy(), abar)
    # posterior q(x_{t-1} | x_t, x_0) variance, and 0 at t = 0
    t = 500
    assert d.posterior_variance[t].item() == pytest.approx((1 - abar[t - 1]) / (1 - abar[t]) * (1 - abar[t] / abar[t - 1]))
    assert d.posterior_variance[0].item() == 0
    # q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I): check its moments by sampling
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[1.5, -2.0, 0.0]]).repeat(200_000, 1)
    for t in (0, 250, 999):
        noise = torch.randn(x0.shape, generator=gen)
        xt = d.q_sample(x0, torch.full((len(x0),), t), noise)
        assert torch.allclose(xt.mean(0), math.sqrt(abar[t]) * x0[0], atol=0.01)
        assert torch.allclose(xt.var(0), torch.full((3,), 1 - abar[t], dtype=torch.float32), rtol=0.02, atol=1e-4)


def test_ddpm_ancestral_sampling_recovers_gaussian_data_with_the_exact_denoiser():
    """For x_0 ~ N(m, s^2) the optimal eps-predictor is known in closed form; sampling with
    it must give back N(m, s^2)."""
    d = Diffusion(T=1000, beta_start=1e-4, beta_end=2e-2)
    m, s = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.1])

    def eps_star(x, t):
        ab = d.alphas_cumprod[t].float()[:, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * m) / (ab * s**2 + 1 - ab)

    x = d.sample(eps_star, (20_000, 2), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), m, atol=0.02)
    assert torch.allclose(x.std(0), s, rtol=0.05)


# --- P-diff / COND P-Diff ---------------------------------------------------------------


def _relative_error(rec, x):
    """Reconstruction error relative to the snapshots' spread around their mean."""
    return float(np.linalg.norm(rec - x) / np.linalg.norm(x - x.mean(0)))


def test_pdiff_reconstructs_samples_shapes_and_determinism(world, capsys):
    out = world.root / "pdiff"
    assert main(["train-pdiff", "--repository", str(world.repo.path), "--tasks", ",".join(world.tasks),
                 "--no-conditional", "--pdiff", json.dumps(PDIFF_SPEC), "--out", str(out), "--threads", "1"]) == 0
    models, cfg = load_pdiff(out)
    assert sorted(models) == world.tasks and cfg["method"] == "pdiff"
    experts = world.repo.experts()
    for t in world.tasks:
        x = world.repo.expert(t)
        rec = models[t].reconstruct(torch.from_numpy(x)).numpy()
        assert _relative_error(rec, x) < 0.1, t

    files = [world.root / f"pdiff_{i}.safetensors" for i in range(2)]
    for f in files:
        assert main(["sample-pdiff", "--model", str(out), "--repository", str(world.repo.path),
                     "--tasks", ",".join(world.tasks), "--out", str(f)]) == 0
    (a, layout, meta), (b, _, _) = load_candidates(files[0]), load_candidates(files[1])
    assert meta["method"] == "pdiff" and layout == world.repo.layout
    for t in world.tasks:
        assert a[t].shape == (PDIFF_SPEC["samples"], layout.dim)
        assert np.array_equal(a[t], b[t])  # seeded: the same samples
        assert np.isfinite(a[t]).all()
        # each task's model generates near its own expert, not the others
        dist = [np.linalg.norm(a[t] - mu, axis=1).mean() for mu in experts.mu]
        assert int(np.argmin(dist)) == experts.tasks.index(t)
    assert not np.array_equal(a[world.tasks[0]][0], a[world.tasks[0]][1])  # samples differ from each other
    # another seed gives other samples; a task without a model is an error
    main(["sample-pdiff", "--model", str(out), "--repository", str(world.repo.path), "--tasks", world.tasks[0],
          "--seed", "7", "--samples", "2", "--out", str(world.root / "pdiff_seed7.safetensors")])
    c, _, _ = load_candidates(world.root / "pdiff_seed7.safetensors")
    assert c[world.tasks[0]].shape[0] == 2 and not np.allclose(c[world.tasks[0]], a[world.tasks[0]][:2])
    assert main(["sample-pdiff", "--model", str(out), "--repository", str(world.repo.path), "--tasks", "no_such_task",
                 "--out", str(world.root / "bad.safetensors")]) == 2
    capsys.readouterr()


def test_cond_pdiff_samples_follow_the_task_condition(world, capsys):
    out = world.root / "cond_pdiff"
    assert main(["train-pdiff", "--repository", str(world.repo.path), "--embeddings", str(world.embeddings_path),
                 "--tasks", ",".join(world.tasks), "--conditional", "--pdiff", json.dumps(PDIFF_SPEC),
                 "--out", str(out), "--threads", "1"]) == 0
    models, cfg = load_pdiff(out)
    assert list(models) == ["cond_pdiff"] and cfg["conditional"] and cfg["cond_dim"] > 0
    model = models["cond_pdiff"]
    x = np.concatenate([world.repo.expert(t) for t in world.tasks])
    assert _relative_error(model.reconstruct(torch.from_numpy(x)).numpy(), x) < 0.15

    experts = world.repo.experts()
    samples = {}
    for t in world.tasks:  # the same noise for every task: only the condition differs
        cond = torch.from_numpy(condition_vector(world.embeddings[t]["text_embedding"]))
        samples[t] = model.sample(4, cond, generator=torch.Generator().manual_seed(0)).numpy()
        again = model.sample(4, cond, generator=torch.Generator().manual_seed(0)).numpy()
        assert np.array_equal(samples[t], again)
    assert not np.allclose(samples[world.tasks[0]], samples[world.tasks[1]], atol=1e-4)
    for t in world.tasks:
        dist = [np.linalg.norm(samples[t] - mu, axis=1).mean() for mu in experts.mu]
        assert int(np.argmin(dist)) == experts.tasks.index(t)

    file = world.root / "cond_pdiff.safetensors"
    assert main(["sample-pdiff", "--model", str(out), "--repository", str(world.repo.path),
                 "--embeddings", str(world.embeddings_path), "--tasks", ",".join(world.tasks), "--out", str(file)]) == 0
    vecs, layout, meta = load_candidates(file)
    assert meta["method"] == "cond_pdiff" and all(meta["info"][t]["seen"] for t in world.tasks)
    assert all(v.shape == (PDIFF_SPEC["samples"], layout.dim) for v in vecs.values())
    capsys.readouterr()


def test_training_is_byte_identical_run_to_run(world, capsys):
    small = json.dumps({**PDIFF_SPEC, "ae_epochs": 20, "diffusion_epochs": 20, "T": 20})
    for run in ("a", "b"):
        main(["train-mole", "--backbone", world.backbone, "--manifest", str(world.manifest), "--tasks",
              ",".join(world.tasks[:2]), "--repository", str(world.repo.path), "--mole",
              json.dumps({"epochs": 1, "batch_size": 8, "probe_pairs": 4}), "--out", str(world.root / run / "mole"),
              "--threads", "1"])
        main(["train-pdiff", "--repository", str(world.repo.path), "--tasks", ",".join(world.tasks), "--conditional",
              "--pdiff", small, "--out", str(world.root / run / "cond_pdiff"), "--threads", "1"])
        main(["sample-pdiff", "--model", str(world.root / run / "cond_pdiff"), "--repository", str(world.repo.path),
              "--tasks", ",".join(world.tasks), "--out", str(world.root / run / "cond_pdiff.safetensors")])
    files = sorted(p.relative_to(world.root / "a") for p in (world.root / "a").rglob("*") if p.is_file())
    assert len(files) == 6
    for f in files:
        assert (world.root / "a" / f).read_bytes() == (world.root / "b" / f).read_bytes(), f
    capsys.readouterr()


def test_conv_autoencoder_round_trips_any_length():
    spec = PDiffSpec(autoencoder="conv", latent=6, channels=[4, 4, 2], kernel_size=5)
    for dim in (40, 77):
        ae = ParamAutoencoder(dim, spec)
        z = ae.encode(torch.randn(3, dim))
        assert z.shape == (3, 6) and ae.decode(z).shape == (3, dim)


def test_specs_reject_bad_settings():
    with pytest.raises(SGLoraError, match="unknown key"):
        PDiffSpec.from_dict({"latnet": 3})
    with pytest.raises(SGLoraError, match="cfg_dropout"):
        PDiffSpec.from_dict({"guidance": 2.0})
    with pytest.raises(SGLoraError, match="autoencoder"):
        PDiffSpec.from_dict({"autoencoder": "unet"})
    with pytest.raises(SGLoraError, match="unknown key"):
        MoLESpec.from_dict({"epoch": 3})
    with pytest.raises(SGLoraError, match="temperature"):
        MoLESpec.from_dict({"temperature": 0})


@pytest.mark.parametrize("command", ["train-mole", "evaluate-mole", "train-pdiff", "sample-pdiff"])
def test_every_baseline_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--out" in text and ("MoLE" in text or "P-diff" in text)


# --- the nearest expert -------------------------------------------------------------------


def test_nearest_expert_is_the_k1_merge_of_the_description_nearest_expert(tmp_path, tiny_world, tiny_clip, tiny_repo,
                                                                          tiny_embeddings):
    """The nearest-expert row: the expert whose description is nearest (cosine, computed
    here) alone, the same tensors as Top-K with K = 1 chosen on validation, the same metrics."""
    tasks = ["yorkshire_terrier", "calla_lily"]
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"chosen": {"topk_weighted": {"k": 1, "tau": 0.05}}}))
    files = {}
    for method, extra in (("nearest_expert", []), ("topk_weighted", ["--selection", str(selection)])):
        files[method] = tmp_path / f"{method}.safetensors"
        assert main(["candidates", "--method", method, "--tasks", ",".join(tasks), "--dataset", "world",
                     "--repository", str(tiny_repo), "--embeddings", str(tiny_embeddings),
                     "--prior", json.dumps({"k": 4, "tau": 0.05}), *extra, "--out", str(files[method])]) in (0, None)
    near, _, _ = load_candidates(files["nearest_expert"])
    k1, _, _ = load_candidates(files["topk_weighted"])
    experts = Repository(tiny_repo).experts()
    emb = read_embeddings(tiny_embeddings)
    keys = experts.text_embedding / np.linalg.norm(experts.text_embedding, axis=1, keepdims=True)
    for t in tasks:
        q = emb[t]["text_embedding"]
        nearest = int(np.argmax(keys @ (q / np.linalg.norm(q))))
        assert near[t].shape == (1, experts.mu.shape[1])
        np.testing.assert_array_equal(near[t][0], experts.mu[nearest])
        np.testing.assert_array_equal(near[t], k1[t])
    scores = {}
    for method, path in files.items():
        evaluate_method(tiny_clip, tiny_world / "manifest.parquet", tasks[1:], method, tmp_path / method, path)  # at the scaling the candidates record
        written = json.loads((tmp_path / method / f"{tasks[1]}.json").read_text())
        written["info"].pop("settings")  # {} for the nearest expert: it has none to choose
        scores[method] = {k: v for k, v in written.items() if k != "method"}
    assert scores["nearest_expert"] == scores["topk_weighted"]


# --- the expert mean and the multi-task LoRA -----------------------------------------------


def test_expert_mean_is_the_mean_of_every_experts_final_snapshot(tmp_path, tiny_experts, tiny_repo, tiny_embeddings):
    """The expert-mean row: every expert's final snapshot (its last epoch, the adapter it
    ships) averaged by hand here, the same LoRA for every task; not Model Soups' mean of mu_k.
    On seen tasks a task's own expert is left out."""
    from sglora.experts.training import read_snapshots

    final = {t: read_snapshots(d)[0][-1].astype(np.float64) for t, d in tiny_experts.items()}
    by_hand = sum(final.values()) / len(final)
    tasks = ["yorkshire_terrier", "calla_lily"]
    out = tmp_path / "expert_mean.safetensors"
    assert main(["candidates", "--method", "expert_mean", "--tasks", ",".join(tasks), "--dataset", "world",
                 "--repository", str(tiny_repo), "--embeddings", str(tiny_embeddings), "--out", str(out)]) in (0, None)
    vecs, _, meta = load_candidates(out)
    for t in tasks:
        assert vecs[t].shape == (1, by_hand.size)
        np.testing.assert_allclose(vecs[t][0], by_hand, rtol=0, atol=1e-7)
        assert meta["info"][t]["experts"] == list(tiny_experts)
    assert not np.allclose(vecs[tasks[0]][0], Repository(tiny_repo).experts().mu.mean(0), atol=1e-6)
    seen = tmp_path / "seen.safetensors"
    assert main(["candidates", "--method", "expert_mean", "--tasks", "tiger_lily", "--dataset", "world", "--seen",
                 "--repository", str(tiny_repo), "--embeddings", str(tiny_embeddings), "--out", str(seen)]) in (0, None)
    others = [v for t, v in final.items() if t != "tiger_lily"]
    np.testing.assert_allclose(load_candidates(seen)[0]["tiger_lily"][0], sum(others) / len(others), rtol=0, atol=1e-7)


def test_multitask_trains_on_every_experts_training_pairs_and_chooses_its_epochs_on_validation(tmp_path, tiny_world,
                                                                                              tiny_clip):
    """The multi-task LoRA sees the union of the experts' training pairs and no validation or
    test image; its length is the best-scoring epoch on the validation tasks, and every task of a
    group gets that one LoRA."""
    import pyarrow.parquet as pq

    from sglora.experts.training import fit_lora, read_snapshots, task_pairs

    manifest = tiny_world / "manifest.parquet"
    experts, validation = ["scottish_terrier", "tiger_lily", "water_lily"], ["calla_lily", "yorkshire_terrier"]
    rows = pq.read_table(manifest).to_pylist()
    union = {r["image_path"] for r in rows if r["task"] in experts and r["split"] == "train" and r["captions"]}
    unseen = {r["image_path"] for r in rows if r["task"] in validation or r["split"] == "test"}
    paths, _ = task_pairs(manifest, experts, "train")
    assert set(paths) == union and len(paths) == len(union) and not set(paths) & unseen

    from conftest import TINY_TRAIN

    training = dict(TINY_TRAIN)
    out = tmp_path / "multitask"
    assert main(["train-multitask", "--backbone", tiny_clip, "--manifest", str(manifest), "--tasks", ",".join(experts),
                 "--validation", ",".join(validation), "--out", str(out), "--training", json.dumps(training),
                 "--multitask", json.dumps({"epochs": [2, 1]}), "--threads", "1", "--device", "cpu"]) in (0, None)
    info = json.loads((out / "training.json").read_text())
    assert info["tasks"] == experts and info["pairs"] == len(union) and len(info["losses"]) == 2
    scores = info["selection"]["scores"]
    assert [s["epochs"] for s in scores] == [1, 2] and set(scores[0]["per_task"]) == set(validation)
    best = max(range(2), key=lambda i: (scores[i]["score"], -i))
    assert info["selection"]["chosen"] == {"epochs": scores[best]["epochs"]}
    snaps, _ = read_snapshots(out)
    again = fit_lora(tiny_clip, manifest, experts, LoraSpec(), TrainSpec.from_dict(training | {"epochs": 2, "snapshots": 2}),
                     threads=1, progress=False, keep=[1, 2])
    np.testing.assert_array_equal(snaps, again.snapshots[best : best + 1])

    cands = tmp_path / "multitask.safetensors"
    assert main(["candidates", "--method", "multitask", "--loras", str(out), "--tasks", "boston_terrier,calla_lily",
                 "--out", str(cands)]) in (0, None)
    vecs, _, meta = load_candidates(cands)
    for t in ("boston_terrier", "calla_lily"):
        np.testing.assert_array_equal(vecs[t], snaps[-1:])
        assert meta["info"][t]["experts"] == experts and meta["info"][t]["settings"] == info["selection"]["chosen"]

