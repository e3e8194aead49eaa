"""LoRAs trained in batches (`sglora train-loras`, the train_lora_<reader>_<k> rules): the
same bytes as one process per LoRA, and a batch plan that depends only on the config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_TRAIN

BIN = Path(sys.executable).parent
LORA: dict = {}  # the defaults, as in tests/conftest.py


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sglora(*args: str) -> None:
    """Run one `sglora` step in a process of its own (this checkout's package)."""
    proc = subprocess.run([sys.executable, "-m", "sglora", *args], capture_output=True, text=True,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.heavy
def test_a_batch_writes_the_bytes_of_one_process_per_lora(tiny_world, tiny_clip, tmp_path):
    """Two LoRAs trained one after the other in one process: every file of each folder equals
    the one its own process writes (the second task does not see the first's RNG or threads)."""
    manifest = str(tiny_world / "manifest.parquet")
    settings = ["--lora", json.dumps(LORA), "--training", json.dumps(TINY_TRAIN), "--threads", "1"]
    tasks = ["tiger_lily", "boston_terrier"]
    for task in tasks:
        sglora("train-lora", "--backbone", tiny_clip, "--manifest", manifest, "--task", task,
               "--out", str(tmp_path / "single" / task), *settings)
    sglora("train-loras", "--backbone", tiny_clip, "--manifest", manifest,
           "--loras", *[f"{t}={tmp_path / 'batch' / t}" for t in tasks], *settings)
    for task in tasks:
        single, batch = files(tmp_path / "single" / task), files(tmp_path / "batch" / task)
        assert {"snapshots.safetensors", "training.json"} <= set(single)
        assert sorted(batch) == sorted(single)
        assert [name for name in single if batch[name] != single[name]] == [], task


def planned_loras(cfg: dict, tmp: Path) -> dict[str, list[str]]:
    """``rule -> its LoRA folders`` (relative to the results) of every training job `snakemake -n` plans."""
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "2", "--configfile", str(config)], cwd=ROOT,
                          capture_output=True, text=True, env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        m = re.match(r"rule (train_lora\w*):", block)
        out = re.search(r"\n\s+output: (.*)", block)
        if m and out:
            key = m[1] if m[1] != "train_lora" else f"train_lora/{len(jobs)}"
            jobs[key] = [p.removeprefix(cfg["results"] + "/") for p in out[1].split(", ")]
    return jobs


@pytest.mark.heavy
def test_the_batches_are_dealt_from_the_config_alone(tmp_path):
    """config/tiny.yaml's plan: each reader's tasks dealt round-robin in config order, every
    LoRA in exactly one batch, the same plan on every dry-run; `lora_batches: 0` plans one
    train_lora job per LoRA, the same LoRAs."""
    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    plan = planned_loras(cfg, tmp_path)
    experts = cfg["experts"]["tasks"]
    assert sorted(plan["train_lora_experts_0"]) == sorted(f"loras/world/{t}" for t in experts[0::2])
    assert sorted(plan["train_lora_experts_1"]) == sorted(f"loras/world/{t}" for t in experts[1::2])
    assert "train_lora_oracles_seen_0" not in plan  # the seen group's Oracles are the experts
    assert sorted(plan["train_lora_validation_0"]) == ["loras/world/cairn_terrier"]
    everything = [p for outs in plan.values() for p in outs]
    assert len(everything) == len(set(everything)) == 9
    assert planned_loras(cfg, tmp_path) == plan

    cfg["lora_batches"] = 3
    wide = planned_loras(cfg, tmp_path)
    assert sorted(wide["train_lora_experts_0"]) == sorted(f"loras/world/{t}" for t in experts[0::3])
    assert sorted(p for outs in wide.values() for p in outs) == sorted(everything)

    cfg["lora_batches"] = 0
    single = planned_loras(cfg, tmp_path)
    assert all(rule.startswith("train_lora/") and len(outs) == 1 for rule, outs in single.items())
    assert sorted(p for outs in single.values() for p in outs) == sorted(everything)


def test_the_paper_presets_train_one_lora_per_job_and_the_embedded_configs_batch():
    """The choice is the config's (the Snakefile cannot see the executor): every paper preset
    says `lora_batches: 0` (GPU jobs that spread over a cluster); the embedded configs leave
    it unset (2) or ask for more batches (decisive.yaml), so their LoRAs train in batches."""
    presets = sorted((ROOT / "config").glob("*.yaml"))
    assert len(presets) > 10
    for path in presets:
        cfg = yaml.safe_load(path.read_text())
        if path.name == "tiny.yaml":
            assert "lora_batches" not in cfg
        else:
            assert cfg["backbone"].get("pretrained") and cfg["lora_batches"] == 0, path.name
    for path in [ROOT / "config.yaml", *sorted((ROOT / "config/embedded").glob("*.yaml"))]:
        assert yaml.safe_load(path.read_text()).get("lora_batches", 2) >= 2, path.name
    rules = (ROOT / "workflow/rules/loras_common.smk").read_text()
    assert 'config.get("lora_batches", 2)' in rules and "local_exec" not in rules
