"""SG-LoRA's grid, read from a config by the library (sglora/generator/grid.py) and by the Snakefile:
the grid completed with the settings' defaults, the paper-faithful point, the CVAE
trainings and their folder names; and the lists of methods the rules take from the registry."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from sglora.generator.settings import VARIANTS, CVAESpec, SamplingSpec
from sglora.generator.grid import cvae_training, cvae_variants, paper_point, sampling_section, selection_grid, variant_name
from sglora.methods import METHODS, methods_where
from sglora.generator.settings import PriorSpec

BIN = Path(sys.executable).parent
BARE = {"cvae": {}, "prior": {}, "sampling": {}, "groups": {"g": {"methods": ["sglora"]}}}


def test_a_variant_is_off_at_its_settings_default():
    defaults = {"cvae": CVAESpec(), "sampling": SamplingSpec()}
    assert VARIANTS and all(off == getattr(defaults[section], key) for key, (section, off) in VARIANTS.items())


def test_a_config_without_variants_has_the_defaults_and_no_variant_axis():
    grid = selection_grid(BARE)["sglora"]
    assert grid == {"condition": [CVAESpec().condition], "k": [PriorSpec().k], "tau": [PriorSpec().tau],
                    "temperature": [SamplingSpec().temperature]}
    assert list(cvae_variants(BARE)) == [f"{CVAESpec().condition}-k{PriorSpec().k}-tau{PriorSpec().tau}"]
    assert sampling_section(BARE) == {"samples": 10, "seed": 0, "temperature": 1.0, "runs": 1}


def test_a_variant_is_an_axis_when_the_config_turns_it_on_or_the_grid_varies_it():
    cfg = BARE | {"cvae": {"augment": 4}, "sampling": {"average": True}, "selection": {"sglora": {"describe": [False, True]}}}
    grid = selection_grid(cfg)["sglora"]
    assert grid["augment"] == [4] and grid["average"] == [True] and grid["describe"] == [False, True]
    assert sampling_section(cfg)["average"] is True
    assert sorted(cvae_variants(cfg)) == ["loo-k4-tau0.05-aug4-describe0", "loo-k4-tau0.05-aug4-describe1"]


def test_the_paper_point_turns_every_variant_off_and_samples_at_temperature_one():
    cfg = BARE | {"cvae": {"condition": "all", "augment": 4}, "prior": {"k": 3}, "sampling": {"temperature": 0.5}}
    assert paper_point(cfg) == {"condition": "all", "k": 3, "tau": PriorSpec().tau, "temperature": 1.0,
                                "augment": 0, "describe": False, "average": False}


def test_the_paper_point_gets_a_cvae_when_a_group_has_its_row_and_the_grid_lacks_it():
    cfg = BARE | {"selection": {"sglora": {"augment": [4]}}}
    assert list(cvae_variants(cfg)) == ["loo-k4-tau0.05-aug4"]
    with_row = cfg | {"groups": {"g": {"methods": ["sglora", "sglora_paper"]}}}
    assert list(cvae_variants(with_row)) == ["loo-k4-tau0.05-aug4", "loo-k4-tau0.05-aug0"]
    assert variant_name({"condition": "self", "k": 2, "tau": 0.1, "describe": True}) == "self-k2-tau0.1-describe1"


def test_a_cvae_training_takes_its_variant_and_the_run_seed():
    cfg = BARE | {"cvae": {"seed": 7, "epochs": 3}, "prior": {"modality": "visual"}}
    got = cvae_training(cfg, {"condition": "all", "k": 2, "tau": 0.1, "augment": 4}, run=1)
    assert got == {"cvae": {"seed": 8, "epochs": 3, "condition": "all", "augment": 4},
                   "prior": {"modality": "visual", "k": 2, "tau": 0.1}}


def test_the_grid_module_does_not_import_torch():
    """The Snakefile imports it: a workflow process never loads torch."""
    code = "import sys, sglora.generator.grid, sglora.methods; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_novelty_measures_each_generator_once():
    generative = methods_where(kind="generative", samples_of=None)
    assert "sglora" in generative and "sglora_paper" not in generative
    assert all(METHODS[m].samples_of in generative for m in methods_where(kind="generative") if m not in generative)


def _dry_run(cfg_path: Path, results: Path) -> list[dict]:
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--forceall", "--configfile", str(cfg_path),
                           "--config", f"results={results}"], cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = []
    for line in out.splitlines():
        if head := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append({"rule": head.group(1)})
        elif jobs and (m := re.match(r"\s+(wildcards|resources|benchmark): (.*)$", line)):
            jobs[-1][m.group(1)] = m.group(2)
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = shlex.split(line.removeprefix("Shell command: ").split(" > ")[0])
    return jobs


def _arg(job: dict, flag: str) -> list[str]:
    args, i = job["shell"], job["shell"].index(flag) + 1
    values = []
    while i < len(args) and not args[i].startswith("--"):
        values.append(args[i])
        i += 1
    return values


@pytest.mark.heavy
def test_the_workflow_builds_its_jobs_from_the_librarys_grid_and_registry(tmp_path):
    cfg_path = ROOT / "config" / "tiny.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    jobs = _dry_run(cfg_path, tmp_path / "results")
    by_rule = lambda rule: [j for j in jobs if j["rule"] == rule]  # noqa: E731
    runs = sampling_section(cfg)["runs"]
    trained = {re.search(r"variant=([^,]+)", j["wildcards"]).group(1) for j in by_rule("train_cvae")}
    assert trained == set(cvae_variants(cfg)) and len(by_rule("train_cvae")) == len(trained) * runs
    (select,) = [j for j in by_rule("select") if "method=sglora" in j["wildcards"]]
    assert json.loads(_arg(select, "--grid")[0]) == {"sglora": selection_grid(cfg)["sglora"]}
    assert json.loads(_arg(select, "--sampling")[0]) == sampling_section(cfg)
    for job in by_rule("sample_sglora_paper"):
        assert json.loads(_arg(job, "--settings")[0]) == paper_point(cfg)
    assert json.loads(_arg(by_rule("ablation")[0], "--paper")[0]) == paper_point(cfg)
    for job in by_rule("novelty"):
        group = re.search(r"group=([^,]+)", job["wildcards"]).group(1)
        measured = [item.split("=")[0] for item in _arg(job, "--candidates")]
        assert measured == [m for m in cfg["groups"][group]["methods"]
                            if METHODS[m].kind == "generative" and METHODS[m].samples_of is None]
    baselines = {re.search(r"method=([^,]+)", j["wildcards"]).group(1) for j in by_rule("candidates_generator")}
    assert baselines == set(methods_where(candidates="generator-candidates"))
    # one evaluation rule over every method; the steps that run a model ask for resources and time themselves
    assert {re.search(r"method=([^,]+)", j["wildcards"]).group(1) for j in by_rule("evaluate")} >= {"zero_shot", "mole", "sglora"}
    for rule in ("embed", "train_pdiff", "evaluate", "evaluate_validation", "premises"):
        for job in by_rule(rule):
            assert "gpu=" in job["resources"] and "mem_mb=" in job["resources"], (rule, job)
            assert job.get("benchmark"), (rule, job)
    assert all("--threads" in job["shell"] for job in by_rule("train_pdiff"))
