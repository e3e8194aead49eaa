"""The foundation: CLI, config validation, offline loading of tiny models."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT

STEPS = ["world", "pretrain", "embed", "train-lora", "train-loras", "assemble", "train-cvae", "candidates", "evaluate", "generate",
         "tables", "figures", "manifest", "caption", "train-mole", "evaluate-mole", "train-pdiff", "sample-pdiff"]


def test_every_step_has_help():
    from sglora.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(STEPS) <= set(sub.choices), f"missing steps: {set(STEPS) - set(sub.choices)}"
    for step in STEPS:
        text = sub.choices[step].format_help()
        assert len(sub.choices[step].description or "") > 20, step
        assert "--" in text


def test_console_script_runs():
    exe = shutil.which("sglora") or str(Path(sys.executable).parent / "sglora")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "train-lora" in out and "generate" in out


def _snakemake_dry(config: dict, tmp_path: Path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    exe = str(Path(sys.executable).parent / "snakemake")
    return subprocess.run([exe, "-n", "--configfile", str(cfg), "--directory", str(ROOT), "--snakefile",
                           str(ROOT / "Snakefile")], capture_output=True, text=True, cwd=ROOT)


def _default():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_misspelled_key_fails_before_any_job(tmp_path):
    cfg = _default()
    cfg["cvae"]["latnet"] = 8
    cfg["results"] = str(tmp_path / "results")
    proc = _snakemake_dry(cfg, tmp_path)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "latnet" in err
    assert "Job stats" not in err and not (tmp_path / "results").exists()


def test_wrong_type_and_cross_field_errors(tmp_path):
    cfg = _default()
    cfg["training"]["epochs"] = "many"
    proc = _snakemake_dry(cfg, tmp_path)
    assert proc.returncode != 0 and "epochs" in proc.stdout + proc.stderr
    cfg = _default()
    cfg["experts"]["dataset"] = "nonexistent"
    proc = _snakemake_dry(cfg, tmp_path)
    assert proc.returncode != 0 and "experts.dataset" in proc.stdout + proc.stderr
    cfg = _default()
    cfg["description"]["template"] = "a photo"
    proc = _snakemake_dry(cfg, tmp_path)
    assert proc.returncode != 0 and "template" in proc.stdout + proc.stderr


def test_tiny_models_load_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import CLIPModel, CLIPProcessor, Qwen2VLForConditionalGeneration

    from sglora.data.captioning import load_processor
    from sglora.backbone.tiny import save_tiny_clip
    from tiny_qwen import save_tiny_qwen2vl

    clip_dir = save_tiny_clip(tmp_path / "clip")
    model = CLIPModel.from_pretrained(clip_dir)
    processor = CLIPProcessor.from_pretrained(clip_dir)
    n = sum(p.numel() for p in model.parameters())
    assert 50_000 < n < 2_000_000
    assert processor.tokenizer("a photo of a cat")["input_ids"][0] == processor.tokenizer.bos_token_id
    qwen_dir = save_tiny_qwen2vl(tmp_path / "qwen")
    qwen = Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir)
    assert sum(p.numel() for p in qwen.parameters()) < 2_000_000
    assert load_processor(str(qwen_dir)).tokenizer is not None


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    from sglora.io import atomic_path, slugify, unique_slugs, inside, SGLoraError

    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    assert slugify("American Pit Bull Terrier") == "american_pit_bull_terrier"
    assert slugify("../../etc/passwd") == "etc_passwd"
    with pytest.raises(SGLoraError, match="both give the task id"):
        unique_slugs(["Desert-Rose", "desert rose"])
    with pytest.raises(SGLoraError, match="escapes"):
        inside(tmp_path, "../x")


def test_outputs_respect_the_umask(tmp_path):
    from sglora.io import atomic_path, save_safetensors, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_safetensors(tmp_path / "b.safetensors", {"t": np.zeros(2, np.float32)})
        with atomic_path(tmp_path / "folder", directory=True) as tmp:
            (tmp / "inner.txt").write_text("x")
        os.umask(0o077)
        write_json(tmp_path / "private.json", {"x": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == 0o644
    assert mode(tmp_path / "b.safetensors") == 0o644
    assert mode(tmp_path / "folder") == 0o755
    assert mode(tmp_path / "private.json") == 0o600


def test_noisy_expert_without_a_spread_fails_before_any_job(tmp_path):
    cfg = _default()
    cfg["results"] = str(tmp_path / "results")
    cfg["sampling"] |= {"average": True, "runs": 1}
    proc = _snakemake_dry(cfg, tmp_path)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "noisy_expert" in err and "sampling.runs" in err
    assert not (tmp_path / "results").exists()


def test_a_list_flag_replaces_its_default_instead_of_extending_it():
    """argparse's "extend" adds to a default list: --against oracle once gave
    [topk_weighted, oracle, oracle] (the study table printed every column twice)."""
    from sglora.cli import arguments, build_parser

    parse = lambda *a: arguments(build_parser("study-summary").parse_args(  # noqa: E731
        ["study-summary", "--sizes", "s.json", "--markdown", "m.md", "--out", "o.json", "--figures", "f", *a]))
    assert parse("--against", "oracle")["against"] == ["oracle"]
    assert parse("--against", "topk_weighted", "oracle")["against"] == ["topk_weighted", "oracle"]
    assert "against" not in parse()  # the step's own default applies


GLIBC = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"
FREED = """
import ctypes, os, sys
from sglora.devices import tune_allocator
tuned = tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
block = libc.malloc(16 << 20)
ctypes.memset(block, 1, 16 << 20)
libc.free(block)
print(tuned, (resident() - before) / (1 << 20))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize("env, tuned", [({}, True), ({"SGLORA_MALLOC": "0"}, False),
                                        ({"MALLOC_TRIM_THRESHOLD_": "131072"}, False)])
def test_the_allocator_keeps_freed_memory_unless_told_not_to(env, tuned):
    """tune_allocator: a freed 16 MiB block stays in the process (no return to the kernel
    and fault back in on the next allocation); with SGLORA_MALLOC=0 or the user's own
    MALLOC_* settings nothing changes and glibc hands the block back."""
    base = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "SGLORA_MALLOC")}
    out = subprocess.run([sys.executable, "-c", FREED], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == str(tuned)
    kept = float(out[1])
    assert (kept > 12) if tuned else (kept < 4), out


def test_the_command_line_tunes_the_allocator_before_a_step_runs(monkeypatch, capsys):
    import sglora.cli
    from sglora.cli import main

    order = []
    monkeypatch.setattr(sglora.cli, "tune_allocator", lambda: order.append("tuned"))
    assert main(["check-tasks", "--manifest", "world=/nonexistent.parquet", "--wanted", "{}", "--out", "/nonexistent/x.json"]) == 2
    assert order == ["tuned"] and "nonexistent" in capsys.readouterr().err
