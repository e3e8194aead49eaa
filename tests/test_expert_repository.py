"""Expert LoRAs on the tiny CLIP and the Parquet repository."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sglora.backbone.clip import load_clip, pixel_values, tokenize
from sglora.experts.training import TrainSpec, read_snapshots, task_pairs, train_lora
from sglora.io import SGLoraError
from sglora.experts.lora import LoraSpec, merged, save_adapter
from sglora.experts.repository import Repository

from conftest import TINY_TRAIN


def _outputs(model, processor, manifest):
    paths, caps = task_pairs(manifest, "scottish_terrier", "test")
    px = pixel_values(processor, paths)
    enc = tokenize(processor, [c[0] for c in caps])
    with torch.no_grad():
        out = model(pixel_values=px, **enc)
    return out.logits_per_image


def test_final_adapter_reloads_with_peft(tiny_world, tiny_clip, tiny_experts):
    from peft import PeftModel

    manifest = tiny_world / "manifest.parquet"
    base, processor = load_clip(tiny_clip)
    snaps, layout = read_snapshots(tiny_experts["scottish_terrier"])
    # the trained model's outputs: the LoRA merged into the weights
    with merged(base, snaps[-1], layout, LoraSpec().scaling):
        trained = _outputs(base, processor, manifest).clone()
    peft_model = PeftModel.from_pretrained(load_clip(tiny_clip)[0], str(tiny_experts["scottish_terrier"] / "adapter")).eval()
    reloaded = _outputs(peft_model, processor, manifest)
    torch.testing.assert_close(reloaded, trained, rtol=1e-4, atol=1e-4)
    bare = _outputs(load_clip(tiny_clip)[0], processor, manifest)
    assert not torch.allclose(bare, trained, atol=1e-4), "the expert must change the model"


def test_training_is_deterministic(tiny_world, tiny_clip, tiny_experts, tmp_path):
    train_lora(tiny_clip, tiny_world / "manifest.parquet", "scottish_terrier", tmp_path / "again", LoraSpec(),
               TrainSpec.from_dict(TINY_TRAIN), threads=1, progress=False)
    a, _ = read_snapshots(tiny_experts["scottish_terrier"])
    b, _ = read_snapshots(tmp_path / "again")
    assert a.shape == (2, a.shape[1])
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "again" / "snapshots.safetensors").read_bytes() == \
        (tiny_experts["scottish_terrier"] / "snapshots.safetensors").read_bytes()


def test_repository_vector_back_to_adapter_reproduces_snapshot(tiny_world, tiny_clip, tiny_experts, tiny_repo, tmp_path):
    from peft import PeftModel

    repo = Repository(tiny_repo)
    snaps, layout = read_snapshots(tiny_experts["tiger_lily"])
    from_repo = repo.expert("tiger_lily")
    np.testing.assert_array_equal(from_repo, snaps)
    save_adapter(tmp_path / "adapter", from_repo[0], repo.layout, repo.lora, tiny_clip, {"task": "tiger_lily"})
    base, processor = load_clip(tiny_clip)
    with merged(base, snaps[0], layout, repo.lora.scaling):
        expected = _outputs(base, processor, tiny_world / "manifest.parquet").clone()
    got = _outputs(PeftModel.from_pretrained(load_clip(tiny_clip)[0], str(tmp_path / "adapter")).eval(),
                   processor, tiny_world / "manifest.parquet")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_repository_tables(tiny_repo, tiny_experts):
    repo = Repository(tiny_repo)
    experts = repo.experts()
    assert experts.tasks == list(tiny_experts)
    for i, task in enumerate(experts.tasks):
        snaps, _ = read_snapshots(tiny_experts[task])
        np.testing.assert_allclose(experts.mu[i], snaps.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(experts.var[i], snaps.var(0), rtol=1e-4, atol=1e-9)
    f = pq.ParquetFile(tiny_repo / "snapshots.parquet")
    assert f.metadata.num_row_groups == len(tiny_experts)  # streamed: one row group per expert
    meta = f.schema_arrow.metadata
    layout = json.loads(meta[b"sglora.layout"])
    assert layout["offsets"][0] == 0 and len(layout["keys"]) == len(layout["shapes"])
    assert f.schema_arrow.field("vector").type.list_size == repo.layout.dim
    total = sum(n for _, v in repo.iter_snapshots(batch_rows=3) for n in [len(v)])
    assert total == 2 * len(tiny_experts)


def test_wrong_vector_length_is_an_error(tiny_repo):
    repo = Repository(tiny_repo)
    with pytest.raises(SGLoraError, match="expects"):
        repo.layout.to_state(np.zeros(repo.layout.dim + 1))


def test_adapter_shape_mismatch_is_an_error(tiny_clip, tiny_repo):
    from sglora.backbone.tiny import save_tiny_clip

    repo = Repository(tiny_repo)
    import tempfile

    other = save_tiny_clip(tempfile.mkdtemp(), hidden_size=48, layers=2, heads=2, projection_dim=32, image_size=32)
    model, _ = load_clip(str(other))
    with pytest.raises(SGLoraError, match="shape"):
        with merged(model, repo.experts().mu[0], repo.layout, repo.lora.scaling):
            pass
