"""The config checks of workflow/rules/common.smk, on real dry runs of the default config:
a bad config stops Snakemake before any job, in a few lines that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent


def dry_run(cfg: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([str(BIN / "snakemake"), "-n", "--quiet", "rules", "--configfile", str(path)], cwd=ROOT,
                          capture_output=True, text=True)


def default(tmp_path: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    return cfg


def test_an_expert_in_an_unseen_group_fails_before_any_job(tmp_path):
    cfg = default(tmp_path)
    cfg["groups"]["in_dataset"]["tasks"].append("scottish_terrier")
    proc = dry_run(cfg, tmp_path)
    assert proc.returncode != 0
    assert "groups.in_dataset.tasks: ['scottish_terrier'] of dataset 'world' are experts" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_seen_group_lists_experts_and_another_dataset_may_reuse_an_expert_name(tmp_path):
    """Only unseen groups must be disjoint from the experts, and a task is its dataset and its name."""
    cfg = default(tmp_path)
    assert cfg["groups"]["seen"]["unseen"] is False and set(cfg["groups"]["seen"]["tasks"]) <= set(cfg["experts"]["tasks"])
    cfg["groups"]["sketch"] = {"dataset": "world_sketch", "tasks": ["scottish_terrier"], "methods": ["zero_shot"]}
    proc = dry_run(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_top_level_typo_is_one_line_that_starts_with_the_key(tmp_path):
    cfg = default(tmp_path)
    cfg["sampeling"] = cfg.pop("sampling")
    proc = dry_run(cfg, tmp_path)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 8, "\n".join(lines[:20])
    found = [ln for ln in lines if "sampeling" in ln]
    assert len(found) == 1 and found[0].startswith("config sampeling: unknown key at the top level; known keys: ")
    assert "config sampling: required key missing at the top level" in lines


def test_a_nested_bound_names_its_dotted_key(tmp_path):
    cfg = default(tmp_path)
    cfg["training"]["lr"] = -1.0
    cfg["cvae"]["latnet"] = 4
    proc = dry_run(cfg, tmp_path)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode != 0 and len(lines) <= 8, "\n".join(lines[:20])
    assert any(ln.startswith("config cvae.latnet: unknown key in cvae; known keys: augment, batch_size") for ln in lines)
    assert "config training.lr: -1.0 is less than or equal to the minimum of 0" in lines
