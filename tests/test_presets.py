"""The paper presets (config/*.yaml but tiny.yaml): valid, faithful to the paper where it
is explicit (supplementary Table 6, ViT-B/16, rank 2 q/k/v, M = 100, K = 4, Qwen2-VL
captions), every task name present in its real dataset (checked by building manifests
from tests/miniatures.py, which carries the real class lists), every spec section parsed
by the code that will read it, and a DAG that asks for GPUs where the work is heavy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent
PRESETS = sorted(p for p in (ROOT / "config").glob("*.yaml") if p.name != "tiny.yaml")
PRESET_IDS = [p.stem for p in PRESETS]

# Supplementary Table 6, as printed.
TABLE6 = {
    "coco": ["Airplane", "Truck", "Traffic Light", "Cat", "Horse", "Giraffe", "Handbag", "Snowboard",
             "Wine Glass", "Banana", "Hot Dog", "Laptop"],
    "pets": ["Abyssinian", "American bulldog", "American Pit Bull Terrier", "Birman", "Bombay",
             "British Shorthair", "German Shorthaired", "Havanese", "Keeshond", "Leonberger", "Newfoundland",
             "Scottish Terrier"],
    "flowers": ["Sweet pea", "Tiger lily", "Monkshood", "King Protea", "Corn Poppy", "Daffodil", "Sunflower",
                "Osteospermum", "Anthurium", "Hibiscus", "Desert-Rose", "Mallow"],
}  # fmt: skip
# Experts a preset adds to Table 6, and why (see the preset's header).
EXTRA_EXPERTS = {"coco_seen": ["motorcycle", "sheep"], "ablation_dog_expert": ["dog"]}  # Table 13, Table 12
HEAVY = {"train_lora", "train_multitask", "train_cvae", "train_mole", "train_pdiff", "select", "premises", "embed", "evaluate",
         "evaluate_validation", "novelty", "spaces_select", "spaces_evaluate", "controls"}  # fmt: skip
# heavy rules that take the resources of another rule's section
RESOURCES_OF = {"embed": "evaluate", "train_multitask": "train_lora", "novelty": "evaluate", "controls": "evaluate", "spaces_evaluate": "evaluate", "spaces_select": "select"}


def rule_kind(rule: str) -> str:
    """A job's rule, with the LoRA batches (train_lora_<reader>_<k>) counted as train_lora."""
    return "train_lora" if rule.startswith("train_lora_") else rule


LIGHT = {"world", "manifest", "assemble", "candidates_oracle", "candidates_validation_oracle", "candidates_multitask", "candidates_merging", "candidates_pdiff",
         "sample_sglora", "tables", "figures", "results_page", "controls_table", "all"}  # fmt: skip


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from miniatures import write_all

    return write_all(tmp_path_factory.mktemp("miniatures"))


def pointed_at(cfg: dict, roots: dict[str, Path], results: Path) -> dict:
    """The preset with its dataset roots on the miniatures and its results in ``results``."""
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    for d in cfg["datasets"].values():
        d["root"] = str(roots[d["kind"]])
    cfg["results"] = str(results)
    return cfg


class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        assert not dup, f"line {node.start_mark.line + 1}: repeated keys {dup}"
        return super().construct_mapping(node, deep)


def test_there_is_a_preset_per_reported_experiment():
    names = set(PRESET_IDS)
    assert {"coco_in_dataset", "pets_in_dataset", "coco_to_pets", "pets_to_coco", "coco_to_flowers", "flickr30k",
            "cifar100", "coco_seen", "ablation_visual_prior", "ablation_dog_expert"} <= names  # fmt: skip
    assert any(n.startswith("ablation_template_") for n in names)


@pytest.mark.parametrize("path", PRESETS, ids=PRESET_IDS)
def test_preset_follows_the_paper_and_validates(path):
    from snakemake.utils import validate

    from sglora.paper import PAPER_TABLES

    text = path.read_text()
    cfg = load(path)
    validate(yaml.safe_load(text), str(ROOT / "workflow/schemas/config.schema.yaml"))
    header = "\n".join(line for line in text.splitlines()[:40] if line.startswith("#"))
    assert "Table" in header or "table" in header, "the header names the table it reproduces"
    assert "GPU-h" in header and "/s" in header, "the header estimates the cost and shows the arithmetic"
    assert cfg["results"] == f"results/{path.stem}"
    assert cfg["backbone"]["pretrained"] == "openai/clip-vit-base-patch16"
    assert cfg["lora"]["rank"] == 2 and cfg["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert sorted(cfg["lora"]["towers"]) == ["text", "vision"]
    assert cfg["training"]["snapshots"] == 100 and cfg["training"]["epochs"] >= 100
    assert cfg["prior"]["k"] == 4
    for name, d in cfg["datasets"].items():
        assert not Path(d["root"]).is_absolute() and d["root"].startswith("data/"), f"{name}: a placeholder root"
        cap = d.get("captioner", {})
        if d["kind"] in ("pets", "flowers"):
            assert cap["backend"] == "qwen2vl" and cap["options"]["model"] == "Qwen/Qwen2-VL-7B-Instruct"
            assert cap["options"]["captions_per_image"] == 4 and len(cap["options"]["demonstrations"]) == 2
            # check_tasks wants captioned train and test images of every configured task
            assert set(cap["options"].get("splits", ["train", "test"])) == {"train", "test"}
        else:
            assert cap.get("backend", "none") == "none", f"{name}: {d['kind']} keeps its own captions"
    for g, spec in cfg["groups"].items():
        if "paper" in spec:
            assert spec["paper"] in PAPER_TABLES, f"groups.{g}.paper"
            assert len(spec.get("paper_note", "")) > 40, f"groups.{g}: say how this run differs from the paper's"
    yaml.load(text, Loader=UniqueKeyLoader)  # a repeated key silently drops all but the last
    # every resource override names a rule that reads it, with a GPU where the rule is heavy
    for rule, res in cfg.get("resources", {}).items():
        assert rule in HEAVY - set(RESOURCES_OF) | {"caption"}, rule
        assert res["mem_mb"] > 0 and res["runtime"] > 0
        if rule != "caption":
            assert res["gpu"] == 1, rule


@pytest.mark.parametrize("path", PRESETS, ids=PRESET_IDS)
def test_every_section_parses_with_the_code_that_reads_it(path, tmp_path):
    from sglora.baselines.mole import MoLESpec
    from sglora.baselines.multitask import MultitaskSpec
    from sglora.baselines.pdiff import PDiffSpec
    from sglora.data.captioning import parse_options
    from sglora.generator.settings import CVAESpec
    from sglora.data.datasets import adapter_options
    from sglora.experts.training import TrainSpec
    from sglora.generator.settings import PriorSpec
    from sglora.experts.lora import LoraSpec

    cfg = load(path)
    LoraSpec.from_dict(cfg["lora"])
    TrainSpec.from_dict(cfg["training"])
    CVAESpec.from_dict(cfg["cvae"])
    PriorSpec.from_dict(cfg["prior"])
    MoLESpec.from_dict(cfg.get("mole"))
    MultitaskSpec.from_dict(cfg.get("multitask"))
    PDiffSpec.from_dict(cfg.get("pdiff"))
    PDiffSpec.from_dict(cfg.get("cond_pdiff"))
    demo = tmp_path / "demo.jpg"
    demo.write_bytes(b"")  # parse_options only checks that the file is there
    for d in cfg["datasets"].values():
        assert set(d.get("options", {})) <= set(adapter_options(d["kind"])), d["kind"]
        cap = d.get("captioner", {"backend": "none"})
        options = dict(cap.get("options", {}))
        options["demonstrations"] = [dict(x, image=str(demo)) for x in options.get("demonstrations", [])]
        parse_options(cap["backend"], options)


@pytest.mark.parametrize("path", PRESETS, ids=PRESET_IDS)
def test_experts_are_table6(path):
    from sglora.io import slugify

    cfg = load(path)
    kind = cfg["datasets"][cfg["experts"]["dataset"]]["kind"]
    if kind not in TABLE6:  # CIFAR-100: the supplementary does not name its 8 experts
        assert len(cfg["experts"]["tasks"]) == 8 and kind == "cifar100"
        return
    expected = [slugify(n) for n in TABLE6[kind]] + EXTRA_EXPERTS.get(path.stem, [])
    assert cfg["experts"]["tasks"] == expected


@pytest.mark.parametrize("path", PRESETS, ids=PRESET_IDS)
def test_every_task_is_in_its_real_dataset(path, miniatures, tmp_path):
    """Manifests built with the preset's own adapter options from miniatures that hold the
    real class lists: every expert and every evaluated task has train and test images (what
    the check_tasks rule demands of the captioned manifests before any training)."""
    from sglora.data.datasets import build_manifest

    cfg = load(path)
    tasks: dict[str, dict[str, set]] = {}
    for name, d in cfg["datasets"].items():
        options = dict(d.get("options", {}))
        if d["kind"] == "cifar100":
            options["image_dir"] = str(tmp_path / "png")
        table = build_manifest(d["kind"], miniatures[d["kind"]], **options)
        tasks[name] = {}
        for r in table.select(["task", "split"]).to_pylist():
            tasks[name].setdefault(r["split"], set()).add(r["task"])
    experts = cfg["experts"]
    wanted = {"experts.tasks": (experts["dataset"], experts["tasks"])}
    wanted |= {f"groups.{g}.tasks": (spec["dataset"], spec["tasks"]) for g, spec in cfg["groups"].items()}
    wanted["validation.tasks"] = (cfg["validation"]["dataset"], cfg["validation"]["tasks"])
    for key, (dataset, names) in wanted.items():
        for split in ("train", "test"):
            missing = set(names) - tasks[dataset].get(split, set())
            assert not missing, f"{key}: no {split} images in {dataset} for {sorted(missing)}"
    for g, spec in cfg["groups"].items():
        if spec.get("unseen", True):
            assert spec["dataset"] != experts["dataset"] or not set(spec["tasks"]) & set(experts["tasks"]), g
        else:
            assert set(spec["tasks"]) <= set(experts["tasks"]), f"groups.{g}: seen tasks must be experts"


def test_presets_on_one_repository_choose_settings_on_the_same_validation_tasks():
    """Validation tasks live on the experts' dataset (settings are chosen without a labelled
    task of a cross-dataset target) and are the same for every preset whose repository is
    the same Table 6 column (or CIFAR-100's 8 superclasses), as docs/datasets.md says."""
    by_repository: dict[str, set] = {}
    for path in PRESETS:
        cfg = load(path)
        val, experts = cfg["validation"], cfg["experts"]
        assert val["dataset"] == experts["dataset"], path.stem
        kind = cfg["datasets"][experts["dataset"]]["kind"]
        by_repository.setdefault(kind, set()).add(tuple(val["tasks"]))
    assert all(len(v) == 1 for v in by_repository.values()), by_repository


def test_snakefile_declares_the_light_rules_local():
    """Dry runs never print whether a job is local (Snakemake hides it), so the declaration
    itself is checked here; tests/test_slurm.py checks that such jobs never reach sbatch."""
    # one line, or one name a line as snakefmt writes it
    m = re.search(r"^localrules:((?:\s*\w+\s*,)*[ \t]*\w*)", (ROOT / "Snakefile").read_text(), re.M)
    assert m, "Snakefile has a localrules: directive"
    local = set(re.findall(r"\w+", m.group(1)))
    assert LIGHT <= local
    assert not local & (HEAVY | {"caption", "pretrain_backbone"})


@pytest.mark.heavy
@pytest.mark.parametrize("preset", ["coco_to_pets", "coco_seen"])
def test_dry_run_asks_a_gpu_for_every_heavy_job(preset, miniatures, tmp_path):
    """`snakemake -n` prints each job's resources: heavy rules ask for gpu=1 (and the
    preset's mem_mb / runtime), light ones for no GPU; captioning asks for one only where
    Qwen2-VL runs (Pets), not where a dataset keeps its own captions (COCO)."""
    cfg = pointed_at(load(ROOT / "config" / f"{preset}.yaml"), miniatures, tmp_path / "results")
    patched = tmp_path / f"{preset}.yaml"
    patched.write_text(yaml.safe_dump(cfg))
    # --replace-workflow-config: the preset is the whole config, nothing of config.yaml is merged in
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--replace-workflow-config", "--configfile", str(patched)],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "localrules directive specifies rules that are not present" not in out
    jobs = []  # [rule, wildcards, resources] of each job block ("rule X:" then indented "key: value" lines)
    for line in out.splitlines():
        head = re.match(r"(?:local)?rule (\w+):$", line)
        if head:
            jobs.append([head.group(1), "", ""])
        elif jobs and (m := re.match(r"\s+(wildcards|resources): (.*)$", line)):
            jobs[-1][1 if m.group(1) == "wildcards" else 2] = m.group(2)
    rules = {rule_kind(r) for r, _, _ in jobs}
    assert {"train_lora", "train_cvae", "evaluate", "manifest", "embed", "assemble", "tables", "all"} <= rules
    for rule, wildcards, resources in jobs:
        res = dict(kv.split("=", 1) for kv in resources.split(", ") if "=" in kv)
        kind = rule_kind(rule)
        if kind in HEAVY:
            spec = cfg["resources"]["evaluate" if kind.startswith("evaluate") else RESOURCES_OF.get(kind, kind)]
            assert res.get("gpu") == "1", (rule, resources)
            assert res["mem_mb"] == str(spec["mem_mb"]), (rule, resources)
            # a batch of n LoRAs (rule train_lora_<reader>_<k>) asks for n times one LoRA's runtime
            runtime = int(res["runtime"])
            assert runtime == spec["runtime"] or (rule != kind and runtime % spec["runtime"] == 0), (rule, resources)
        elif rule == "caption":
            kind = cfg["datasets"][re.search(r"dataset=(\w+)", wildcards).group(1)]["kind"]
            assert res.get("gpu") == ("1" if kind == "pets" else "0"), (rule, wildcards, resources)
        else:
            assert res.get("gpu", "0") == "0", (rule, resources)


def dry_run_jobs(cfg: dict, tmp_path: Path, *args: str, env: dict | None = None) -> list[dict]:
    """``snakemake -n -p`` of a config: one dict per job (rule, wildcards, resources, input, shell)."""
    import os

    patched = tmp_path / "config.yaml"
    patched.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--replace-workflow-config", "--configfile", str(patched),
                           *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = []
    for line in out.splitlines():
        if head := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append({"rule": head.group(1), "wildcards": "", "resources": {}, "input": [], "shell": ""})
        elif jobs and (m := re.match(r"\s+(wildcards|resources|input): (.*)$", line)):
            jobs[-1][m.group(1)] = (dict(kv.split("=", 1) for kv in m.group(2).split(", ") if "=" in kv)
                                    if m.group(1) == "resources" else m.group(2).split(", ") if m.group(1) == "input"
                                    else m.group(2))
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = line.removeprefix("Shell command: ")
    return jobs


def with_demos(cfg: dict, tmp_path: Path) -> dict:
    """The captioners' demonstration images pointed at an (empty) file that exists."""
    demo = tmp_path / "demo.jpg"
    demo.write_bytes(b"")
    for d in cfg["datasets"].values():
        opts = d.get("captioner", {}).get("options", {})
        opts["demonstrations"] = [dict(x, image=str(demo)) for x in opts.get("demonstrations", [])]
    return cfg


@pytest.mark.heavy
@pytest.mark.parametrize("preset", ["coco_to_pets", "coco_seen"])
def test_every_job_that_asks_for_a_gpu_runs_its_step_on_cuda(preset, miniatures, tmp_path, monkeypatch):
    """Each job that declares a GPU: its printed command, parsed by sglora's own parser,
    selects CUDA when CUDA is available (patched) and the CPU when it is not; the step is
    never run. Every kind of heavy step is among them."""
    import shlex

    import torch

    from sglora.cli import step_device

    cfg = with_demos(pointed_at(load(ROOT / "config" / f"{preset}.yaml"), miniatures, tmp_path / "results"), tmp_path)
    if preset == "coco_to_pets":  # a preset's LoRAs in batches too (a workstation's choice)
        cfg["lora_batches"] = 2
    gpu_jobs = [j for j in dry_run_jobs(cfg, tmp_path) if j["resources"].get("gpu", "0") != "0"]
    steps = set()
    for job in gpu_jobs:
        argv = shlex.split(job["shell"].split(" > ")[0])
        assert argv[0] == "sglora", job
        steps.add(argv[1])
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert step_device(argv[1:]).type == "cuda", job["shell"]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert step_device(argv[1:]).type == "cpu", job["shell"]
    expected = {"train-loras" if preset == "coco_to_pets" else "train-lora", "train-cvae", "evaluate"}
    expected |= {"caption", "train-mole", "evaluate-mole"} if preset == "coco_to_pets" else {"train-pdiff"}
    assert expected <= steps, steps


@pytest.mark.heavy
@pytest.mark.parametrize("visible,gpu", [("", "0"), ("0,1", "1")])
def test_profile_gpu_limit_follows_the_gpus_present(visible, gpu, miniatures, tmp_path):
    """With the workstation profile, a preset's heavy jobs ask for a GPU only where one is
    present (CUDA_VISIBLE_DEVICES simulates the devices): without one they run on the CPU
    side by side instead of queueing behind a limit of 1."""
    cfg = with_demos(pointed_at(load(ROOT / "config" / "coco_in_dataset.yaml"), miniatures, tmp_path / "results"),
                     tmp_path)
    jobs = dry_run_jobs(cfg, tmp_path, "--profile", "workflow/profiles/default",
                        env={"CUDA_VISIBLE_DEVICES": visible})
    heavy = [j for j in jobs if rule_kind(j["rule"]) in HEAVY]
    assert heavy and all(j["resources"]["gpu"] == gpu for j in heavy), [(j["rule"], j["resources"]) for j in heavy]


def test_presets_data_placeholder_is_git_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    roots = set()
    for preset in (ROOT / "config").glob("*.yaml"):
        for d in (yaml.safe_load(preset.read_text()).get("datasets") or {}).values():
            if "root" in d and not os.path.isabs(d["root"]):
                roots.add(d["root"])
    assert roots, "the presets name no relative dataset root"
    for root in sorted(roots):
        proc = subprocess.run(["git", "check-ignore", "-q", f"{root}/annotations/list.txt"], cwd=ROOT)
        assert proc.returncode == 0, f"{root} is not git-ignored"
