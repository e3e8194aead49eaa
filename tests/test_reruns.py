"""Reruns touch only what changed, checked on the real DAG of
config/tiny.yaml: a run where a stand-in `sglora` creates each job's declared outputs
(empty) records params, code and input sets exactly as a real run does; then a config
edit is dry-run and the planned jobs are compared with what depends on the edit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.heavy
DIRECTORY_RULES = {"pretrain_backbone", "train_lora", "train_multitask", "assemble", "train_cvae", "train_mole", "train_pdiff", "evaluate",
                   "image_cache", "export_cvae", "evaluate_validation"}
# Stands in for `sglora` in the shell commands: its stdout is the job's log file, which
# names the job; it creates that job's outputs.
STAND_IN = """#!{python}
import json, os, pathlib
jobs = json.load(open(os.environ["STAND_IN_JOBS"]))
for out, is_dir in jobs[os.readlink("/proc/self/fd/1")]:
    p = pathlib.Path(out)
    if is_dir:
        p.mkdir(parents=True, exist_ok=True)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
"""


def snakemake(cfg: dict, tmp: Path, *args, check=True, path: str = "") -> subprocess.CompletedProcess:
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {"PATH": f"{path}{BIN}:/usr/bin:/bin", "HOME": str(tmp), "STAND_IN_JOBS": str(tmp / "jobs.json")}
    proc = subprocess.run([str(BIN / "snakemake"), *args, "--cores", "2", "--configfile", str(config)], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if check and proc.returncode:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def planned(cfg: dict, tmp: Path) -> list[tuple[str, dict, list[str], list[str]]]:
    """(rule, wildcards, outputs, log) of every job `snakemake -n` plans."""
    text = snakemake(cfg, tmp, "-n").stdout
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m:
            continue
        wildcards = re.search(r"\n\s+wildcards: (.*)", block)
        out = re.search(r"\n\s+output: (.*)", block)
        log = re.search(r"\n\s+log: (.*)", block)
        jobs.append((m.group(1), dict(re.findall(r"(\w+)=([^,\s]+)", wildcards.group(1))) if wildcards else {},
                     out.group(1).split(", ") if out else [], log.group(1).split(", ") if log else []))
    return jobs


def stand_in_run(cfg: dict, tmp: Path) -> None:
    """Run the whole DAG with the stand-in `sglora`; afterwards nothing is planned."""
    jobs = {}
    for rule, _, outputs, log in planned(cfg, tmp):
        if log:
            jobs[str(Path(log[0]).resolve())] = [
                (o, rule in DIRECTORY_RULES or rule.startswith("train_lora_")  # a batch of LoRA folders
                 or (rule == "sample_sglora" and "samples" in Path(o).parts)
                 or (rule == "spaces_evaluate" and i == 0)) for i, o in enumerate(outputs)]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    stand_in = tmp / "bin" / "sglora"
    stand_in.parent.mkdir()
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    snakemake(cfg, tmp, path=f"{stand_in.parent}:")
    assert planned(cfg, tmp) == [], "a finished run still plans jobs"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[dict, Path]:
    """tiny.yaml without calla_lily (in_dataset) and without AdapterSoup (cross_dataset), run."""
    tmp = tmp_path_factory.mktemp("reruns")
    cfg = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    cfg["results"] = str(tmp / "results")
    cfg.pop("trainer_selection")  # a checkpoint whose JSON the stand-in cannot write; tested in test_workflow.py
    cfg["groups"]["in_dataset"]["tasks"] = ["yorkshire_terrier"]
    cfg.pop("controls")  # a group of one task has no other family to take a description from
    cfg["groups"]["cross_dataset"]["methods"].remove("adaptersoup")
    stand_in_run(cfg, tmp)
    return cfg, tmp


def edited(base) -> dict:
    return yaml.safe_load(yaml.safe_dump(base[0]))


ONLY_THE_GROUP = {"candidates_oracle", "candidates_multitask", "candidates_merging", "sample_sglora", "sample_sglora_paper", "evaluate",
                  "candidates_generator", "novelty", "spaces_evaluate"}
REPORT = {"tables", "figures", "results_page", "all"}


def test_removing_an_unseen_task_reruns_only_its_group(base):
    cfg = edited(base)
    cfg["groups"]["cross_dataset"]["tasks"] = ["fox_terrier"]  # fire_lily removed
    jobs = planned(cfg, base[1])
    assert {rule for rule, *_ in jobs} == ONLY_THE_GROUP | REPORT  # the premises read only validation tasks
    assert {w["group"] for rule, w, *_ in jobs if rule in ONLY_THE_GROUP} == {"cross_dataset"}


def trained(jobs) -> dict[str, list[str]]:
    """``rule -> the LoRA folders (dataset/task) it trains`` of the planned LoRA training jobs."""
    return {rule: ["/".join(Path(o).parts[-2:]) for o in outs] for rule, _, outs, _ in jobs
            if rule.startswith("train_lora")}


def test_adding_an_unseen_task_trains_only_its_oracle(base):
    """The task appended to the group's list lands in a batch of its own reader, alone: the
    group's other batch is not rerun."""
    cfg = edited(base)
    cfg["groups"]["in_dataset"]["tasks"].append("calla_lily")
    jobs = planned(cfg, base[1])
    assert [w["task"] for rule, w, *_ in jobs if rule == "check_tasks"] == ["calla_lily"]
    assert trained(jobs) == {"train_lora_oracles_in_dataset_1": ["world/calla_lily"]}
    assert {rule for rule, *_ in jobs} == ONLY_THE_GROUP | REPORT | {"check_tasks", "train_lora_oracles_in_dataset_1"}
    assert {w["group"] for rule, w, *_ in jobs if rule in ONLY_THE_GROUP} == {"in_dataset"}


def test_adding_a_method_runs_only_that_method(base):
    cfg = edited(base)
    cfg["groups"]["cross_dataset"]["methods"].append("adaptersoup")
    jobs = planned(cfg, base[1])
    assert sorted((rule, w.get("group"), w.get("method")) for rule, w, *_ in jobs if rule not in REPORT) == [
        ("candidates_merging", "cross_dataset", "adaptersoup"), ("evaluate", "cross_dataset", "adaptersoup")]


def test_removing_an_expert_retrains_only_its_batch(base):
    """The experts' batch that held it is one job with one task less: only its other expert
    is retrained (the repository, read from every expert, is rebuilt anyway)."""
    cfg = edited(base)
    cfg["experts"]["tasks"].remove("water_lily")  # [scottish_terrier, tiger_lily] + [boston_terrier, water_lily]
    jobs = planned(cfg, base[1])
    rules = {rule for rule, *_ in jobs}
    assert "assemble" in rules  # the repository changes, and what is built on it
    assert trained(jobs) == {"train_lora_experts_1": ["world/boston_terrier"]}
    assert not rules & {"check_tasks", "world", "caption", "embed", "pretrain_backbone"}


def test_changing_the_sampling_reruns_nothing_of_the_merging_baselines(base):
    """Only SG-LoRA (and what follows its samples) reads config sampling: its selection reruns,
    AdapterSoup's and Top-K's selections, candidates and evaluations do not."""
    cfg = edited(base)
    cfg["sampling"]["samples"] += 1
    jobs = planned(cfg, base[1])
    assert ("select", {"method": "sglora"}) in [(rule, w) for rule, w, *_ in jobs]
    merging = [(rule, w) for rule, w, *_ in jobs if w.get("method") in ("model_soups", "adaptersoup", "topk_weighted")]
    assert merging == []


def test_restoring_the_config_after_a_failed_check(base):
    cfg, tmp = base
    broken = edited(base)
    broken["groups"]["in_dataset"]["tasks"].append("zebra")
    proc = snakemake(broken, tmp, "-n", check=False)
    assert proc.returncode == 0 and "zebra" in proc.stdout
    # the stand-in run's manifests are empty files, so the real check fails
    proc = snakemake(broken, tmp, "--until", "check_tasks", check=False)
    assert proc.returncode != 0
    assert planned(cfg, tmp) == []


# --- item 5: paths are quoted in every shell command ---------------------------------------------

def test_results_folder_with_a_space_and_a_command_substitution(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    results = tmp_path / "my results" / "a $(touch $HOME/pwned) b" / "results"
    cfg["results"] = str(results)
    jobs = planned(cfg, tmp_path)
    assert len(jobs) > 50
    target = results / "data" / "world_sketch" / "world" / "captions.parquet"
    snakemake(cfg, tmp_path, str(target))  # one real light rule: the world of the smallest dataset
    assert target.stat().st_size > 0
    assert not (tmp_path / "pwned").exists()
    assert "Traceback" not in (results / "logs" / "world" / "world_sketch.log").read_text()
    # every shell command of the DAG quotes its paths: the space and "$(" appear only inside quotes
    proc = snakemake(cfg, tmp_path, "-n", "--printshellcmds")
    commands = [line.split(":", 1)[1] for line in (proc.stdout + proc.stderr).splitlines()
                if line.startswith("Shell command: ")]
    assert len(commands) >= len(jobs) - 2  # all but `all` and the world just made
    for command in commands:
        unquoted = re.sub(r"'[^']*'", "", command)
        assert "my results" not in unquoted and "$(" not in unquoted, command
