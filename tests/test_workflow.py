"""The real pipeline, end to end, on config/tiny.yaml: a real Snakemake run, the report,
`sglora generate`, the change-one-setting rerun, and byte-for-byte determinism."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run_env(home: Path) -> dict:
    """A bare environment for Snakemake runs; PYTHONPATH is this checkout, so the rules'
    `sglora` runs the code under test even where the venv was installed from another one."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(home), "PYTHONPATH": str(ROOT)}


def snakemake(*args, results: Path, config: Path | None = None, check=True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "--cores", "2", "--configfile", str(config or ROOT / "config/tiny.yaml"),
           "--config", f"results={results}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=run_env(results.parent))
    if check and proc.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_rules(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from `snakemake -n --quiet rules` output."""
    out = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            out[m.group(1)] = int(m.group(2))
    return out


def digest_tree(root: Path, patterns=("*.parquet", "*.csv", "*.md", "*.tex", "*.safetensors", "*.json")) -> dict:
    out = {}
    for pat in patterns:
        for p in root.rglob(pat):
            if "logs" in p.parts or "benchmarks" in p.parts or ".snakemake" in p.parts:
                continue
            if p == root / "results.md":  # the results page reports the jobs' times, like benchmarks/
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("run") / "results"
    snakemake(results=results)
    return results


@pytest.fixture
def rerun_here(tiny_run):
    """``(path, digests)`` for a test that runs the DAG again from nothing: the shared run's
    path, emptied, and its files' digests. The shared run is moved aside and put back
    afterwards, so the other tests see it whatever the order (and the rerun writes the
    same absolute paths into its files)."""
    digests = digest_tree(tiny_run)
    aside = tiny_run.with_name(tiny_run.name + ".aside")
    tiny_run.rename(aside)
    try:
        yield tiny_run, digests
    finally:
        shutil.rmtree(tiny_run, ignore_errors=True)
        aside.rename(tiny_run)


def test_dag_writes_tables_and_figures(tiny_run):
    for group in ("in_dataset", "cross_dataset", "seen"):
        for ext in ("csv", "md", "tex", "per_task.md", "diagnostic.md", "paired.md", "paired.csv"):
            assert (tiny_run / "tables" / f"{group}.{ext}").stat().st_size > 0
    md = (tiny_run / "tables" / "in_dataset.md").read_text()
    for label in ("Zero-Shot CLIP", "Oracle", "Model Soups", "AdapterSoup", "Top-K LoRA Weighted", "MoLE",
                  "SG-LoRA (2 runs x 3 samples)"):
        assert f"| {label} | " in md
    assert "test-selected" not in md and re.search(r"\| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", md)
    diagnostic = (tiny_run / "tables" / "in_dataset.diagnostic.md").read_text()
    assert "SG-LoRA (best of 6), test-selected (diagnostic only)" in diagnostic
    assert "Settings chosen on the validation tasks" in md
    assert "P-diff (mean of 3)" in (tiny_run / "tables" / "seen.md").read_text()
    # the run chose its settings on the validation task and checked its premises
    import json

    sel = json.loads((tiny_run / "selection" / "selection.json").read_text())
    assert sel["tasks"] == ["cairn_terrier"] and set(sel["chosen"]) == {"sglora", "topk_weighted", "adaptersoup"}
    prem = json.loads((tiny_run / "premises" / "premises.json").read_text())
    assert prem["enforced"] is False and prem["verdicts"]
    assert "SG-LoRA − MoLE" in (tiny_run / "tables" / "in_dataset.paired.md").read_text()
    tex = (tiny_run / "tables" / "in_dataset.tex").read_text()
    assert "\\toprule" in tex and ("\\textbf{" in tex or "$^\\dagger$" in tex)
    # the generator baselines in every unseen table, the spaces and the novelty per group
    for group in ("in_dataset", "cross_dataset"):
        md = (tiny_run / "tables" / f"{group}.md").read_text()
        assert "| Prior sampling (2 runs x 3 samples) | " in md and "| Noisy nearest expert (2 runs x 3 samples) | " in md
        paired = (tiny_run / "tables" / f"{group}.paired.md").read_text()
        assert "SG-LoRA − Prior sampling" in paired and "SG-LoRA − Noisy nearest expert" in paired
        spaces = (tiny_run / "spaces" / f"{group}.md").read_text()
        for method in ("Model Soups", "AdapterSoup", "Top-K LoRA Weighted"):
            for space in ("factors", "product", "product_svd"):
                assert f"| {method} | {space} | " in spaces
    for group in ("in_dataset", "cross_dataset", "seen"):
        nov = json.loads((tiny_run / "novelty" / f"{group}.json").read_text())
        assert "sglora" in nov["methods"] and (tiny_run / "novelty" / f"{group}.png").read_bytes()[:4] == b"\x89PNG"
        assert "novelty of generated LoRAs" in (tiny_run / "novelty" / f"{group}.md").read_text()
    assert set(json.loads((tiny_run / "novelty" / "seen.json").read_text())["methods"]) == {"sglora", "pdiff", "cond_pdiff"}
    # the description controls of every unseen group, each against the task's own description
    for group in ("in_dataset", "cross_dataset"):
        controls = (tiny_run / "tables" / f"{group}.controls.md").read_text()
        for row in ("SG-LoRA: (b) another family's description − (a)", "Top-K LoRA Weighted: (e) paraphrase − (a)"):
            assert f"| {row} | " in controls
        assert len((tiny_run / "tables" / f"{group}.controls.csv").read_text().splitlines()) == 1 + 2 * 5
    for name in ("experts_tsne", "samples_tsne", "r1_bars"):
        assert (tiny_run / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tiny_run / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    # every sample is a PEFT adapter folder with its metadata
    adapters = sorted((tiny_run / "samples" / "in_dataset").glob("*/sample_*"))
    assert len(adapters) == 2 * 2 * 3  # tasks x runs x samples
    from sglora.experts.lora import read_adapter

    _, meta = read_adapter(adapters[0])
    assert {"seed", "run", "experts", "task"} <= set(meta) and abs(sum(e["alpha"] for e in meta["experts"]) - 1) < 1e-6


def test_trainer_selection_chose_the_lr_of_every_lora(tiny_run):
    import json

    sel = json.loads((tiny_run / "selection" / "training.json").read_text())
    assert [r["settings"] for r in sel["scores"]["training"]] == [{"lr": 0.01}, {"lr": 0.02}]
    lr = sel["chosen"]["training"]["lr"]
    for lora in (tiny_run / "loras").glob("*/*"):
        assert json.loads((lora / "training.json").read_text())["training"]["lr"] == lr


def test_compare_runs_puts_two_runs_side_by_side(tiny_run, tmp_path):
    """The frozen_a preset's run-against-run table, here the tiny run against itself: zero differences."""
    out = tmp_path / "runs.md"
    methods = ["topk_weighted", "sglora", "noisy_expert"]
    runs = [f"{space}/{m}={tiny_run / 'metrics' / 'in_dataset' / m}" for space in ("factors", "frozen_a") for m in methods]
    subprocess.run([str(BIN / "sglora"), "compare-runs", "--runs", *runs,
                    "--selections", f"factors={tiny_run / 'selection/selection.json'}",
                    "--group", "in_dataset", "--methods", ",".join(methods),
                    "--tasks", "yorkshire_terrier,calla_lily", "--out", str(out)], check=True, capture_output=True)
    text = out.read_text()
    assert "| Top-K LoRA Weighted | frozen_a | " in text and "+0.00 [+0.00, +0.00]" in text


def test_frozen_a_preset_plans_its_lr_selection_and_the_comparison(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/embedded/space_frozen_a.yaml").read_text())
    other = tmp_path / "default"
    for g, group in cfg["groups"].items():  # the default run has a table of every group
        for m in group["methods"]:
            (other / "metrics" / g / m).mkdir(parents=True)
    (other / "selection").mkdir()
    (other / "selection" / "selection.json").write_text("{}")
    cfg["compare_runs"] = {"factors": str(other)}
    path = tmp_path / "frozen_a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rules = planned_rules(snakemake("-n", "--quiet", "rules", results=tmp_path / "results", config=path))
    unseen = [g for g in cfg["groups"] if g != "seen"]  # in_dataset, cross_dataset, between
    assert len(unseen) == 3
    assert rules["select_training"] == 1 and rules["compare_runs"] == len(unseen) and "spaces_select" not in rules


def test_analysis_config_is_the_default_plus_its_sections():
    """config/embedded/analysis.yaml shares config.yaml's results folder: anything else that
    differed would rerun the default's steps (or mix two worlds in one folder)."""
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    analysis = yaml.safe_load((ROOT / "config/embedded/analysis.yaml").read_text())
    assert analysis.pop("spaces") == {"compare": ["factors", "product", "product_svd"],
                                      "methods": ["model_soups", "adaptersoup", "topk_weighted"]}
    assert analysis.pop("novelty") is True
    assert analysis.pop("results_page")["path"] == "docs/results-analysis.md"
    assert default.pop("results_page")["path"] == "docs/results.md"
    assert analysis["groups"]["seen"].pop("methods") == ["oracle", "pdiff", "cond_pdiff", "sglora"]
    assert default["groups"]["seen"].pop("methods") == ["oracle", "sglora"]
    cross = analysis["groups"].pop("cross_dataset")
    assert cross["dataset"] == "world_sketch" and len(cross["tasks"]) == 6 and "cross_dataset" not in default["groups"]
    assert cross["methods"] == default["groups"]["in_dataset"]["methods"]
    assert analysis == default and "spaces" not in default and "novelty" not in default


def test_noop_rerun_does_nothing(tiny_run):
    proc = snakemake("-n", results=tiny_run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_one_cvae_setting_reruns_only_its_dependents(tiny_run, tmp_path):
    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    cfg["cvae"]["epochs"] += 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    rules = planned_rules(snakemake("-n", "--quiet", "rules", results=tiny_run, config=changed))
    # the generator baselines follow SG-LoRA (its prior, its spread), and so does the novelty of generated LoRAs
    assert set(rules) == {"train_cvae", "select", "selection_summary", "export_cvae", "sample_sglora", "evaluate",
                          "tables", "figures", "results_page", "all", "candidates_generator", "novelty", "ablation",
                          "sample_sglora_paper", "controls", "controls_table"}, rules
    # (2 condition modes x 2 augment of the selection grid + the paper-faithful point, which the grid lacks:
    # describe off) x 2 runs
    assert rules["train_cvae"] == 10
    assert rules["select"] == 1  # SG-LoRA's selection only: the merging baselines keep theirs
    # SG-LoRA in each of the three groups; its paper-faithful row, prior sampling and noisy expert in two
    assert rules["evaluate"] == 9
    assert rules["sample_sglora_paper"] == 2
    assert rules["candidates_generator"] == 4 and rules["novelty"] == 3
    assert rules["sample_sglora"] == 3


def test_report_builds(tiny_run, tmp_path):
    report = tmp_path / "report.zip"
    proc = snakemake("--report", str(report), results=tiny_run)
    assert "(WARNING/" not in proc.stdout + proc.stderr  # every caption is valid reST
    import zipfile

    names = zipfile.ZipFile(report).namelist()
    assert any(n.endswith("r1_bars.png") for n in names)
    assert any(n.endswith("in_dataset.csv") for n in names)


def test_generate_writes_a_loadable_adapter_that_changes_outputs(tiny_run, tmp_path):
    import torch
    from peft import PeftModel

    from sglora.backbone.clip import load_clip, tokenize

    out = tmp_path / "zebra"
    cmd = [str(BIN / "sglora"), "generate", "a photo of a fox terrier", "--out", str(out), "--seed", "3",
           "--repository", str(tiny_run / "repository"), "--cvae", str(tiny_run / "cvae" / "selected")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "alpha=" in proc.stdout and "wrote" in proc.stdout
    backbone = str(tiny_run / "backbone")
    base, processor = load_clip(backbone)
    enc = tokenize(processor, ["a photo of a fox terrier", "two small red dots"])
    px = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = base(pixel_values=px, **enc).logits_per_image
        model = PeftModel.from_pretrained(load_clip(backbone)[0], str(out)).eval()
        after = model(pixel_values=px, **enc).logits_per_image
    assert not torch.allclose(before, after)
    # same seed, same adapter, byte for byte
    subprocess.run(cmd[:4] + [str(tmp_path / "again")] + cmd[5:], capture_output=True, check=True)
    assert (out / "adapter_model.safetensors").read_bytes() == (tmp_path / "again" / "adapter_model.safetensors").read_bytes()


def test_kill_and_resume_gives_the_same_results(rerun_here):
    """SIGKILL the whole run (Snakemake and its jobs) at random moments, three times, then
    finish with --rerun-incomplete: every output equals the uninterrupted run's.

    This is also the determinism test: a second run from nothing at the same path (here in
    four pieces) must write the same bytes as the first; a file listed below differs either
    because a job is not deterministic or because a killed job left something behind."""
    import random
    import signal
    import time

    tiny_run, reference = rerun_here
    rng = random.Random(int(os.environ.get("SGLORA_KILL_SEED", "0")))
    cmd = [str(BIN / "snakemake"), "--cores", "2", "--configfile", str(ROOT / "config/tiny.yaml"), "--config",
           f"results={tiny_run}", "--rerun-incomplete"]
    env = run_env(tiny_run.parent)
    for _ in range(3):
        subprocess.run([str(BIN / "snakemake"), "--unlock", "--configfile", str(ROOT / "config/tiny.yaml"),
                        "--config", f"results={tiny_run}"], cwd=ROOT, capture_output=True, env=env)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(4, 30))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    subprocess.run([str(BIN / "snakemake"), "--unlock", "--configfile", str(ROOT / "config/tiny.yaml"), "--config",
                    f"results={tiny_run}"], cwd=ROOT, capture_output=True, env=env)
    snakemake("--rerun-incomplete", results=tiny_run)
    resumed = digest_tree(tiny_run)
    assert resumed.keys() == reference.keys() and len(reference) > 50
    differ = sorted(k for k in reference if reference[k] != resumed[k])
    assert not differ, f"files differ after kill-and-resume: {differ[:10]}"


def test_a_tau_axis_in_sglora_grid_trains_cvaes_per_tau_and_run(tmp_path):
    """τ (and k) change the CVAE's training conditions: a τ axis in selection.sglora plans
    one CVAE per (condition, τ, run) and scores them all in the one SG-LoRA selection; the
    default's grid (docs/method.md) leaves it out for its time budget."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    default = planned_rules(snakemake("-n", "--quiet", "rules", results=tmp_path / "a", config=ROOT / "config.yaml"))
    conditions, runs = len(cfg["selection"]["sglora"]["condition"]), cfg["sampling"]["runs"]
    assert default["train_cvae"] == conditions * runs
    cfg["selection"]["sglora"]["tau"] = [0.05, 0.1]
    path = tmp_path / "tau.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", results=tmp_path / "b", config=path)  # the job listing ends with the job stats
    rules = planned_rules(proc)
    assert rules["train_cvae"] == conditions * 2 * runs and rules["select"] == default["select"]
    assert "cvae/all-k4-tau0.1/run2" in proc.stdout and "cvae/loo-k4-tau0.05/run0" in proc.stdout
