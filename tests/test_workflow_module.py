"""The pipeline used as a Snakemake module from another folder, the way
`snakedeploy deploy-workflow` uses it: a project folder with its own Snakefile
(`module sglora: snakefile: ...; config: config` and `use rule * from sglora`), its own
config/config.yaml and its results, beside a checkout of this repository named `sglora`.
The workflow imports its own package from its own files, not from the folder snakemake runs
in: the dry run uses a snakemake that has no sglora installed beside it (as with per-rule
conda environments) and no PYTHONPATH. And the files the Snakemake workflow catalog reads
for its standardized usage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent

PROJECT_SNAKEFILE = """\
configfile: "config/config.yaml"


module sglora:
    snakefile:
        "sglora/Snakefile"
    config:
        config


use rule * from sglora
"""


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder: its Snakefile, config/config.yaml (config/tiny.yaml with results in the
    project) and the checkout beside them as `sglora/`."""
    folder = tmp_path / "project"
    (folder / "config").mkdir(parents=True)
    (folder / "sglora").symlink_to(ROOT, target_is_directory=True)
    (folder / "Snakefile").write_text(PROJECT_SNAKEFILE)
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["results"] = "results/tiny"
    (folder / "config/config.yaml").write_text(yaml.safe_dump(config))
    return folder


# snakemake as an environment without sglora installed runs it: no finder or path entry that finds the package
WITHOUT_SGLORA = """\
import sys
from pathlib import Path
sys.meta_path[:] = [f for f in sys.meta_path if "sglora" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "sglora" / "__init__.py").exists()]
from snakemake.cli import main
sys.exit(main())
"""


def snakemake(project: Path, *args, installed: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(project.parent)}
    launcher = [str(BIN / "snakemake")] if installed else [sys.executable, "-c", WITHOUT_SGLORA]
    proc = subprocess.run([*launcher, "--cores", "1", *args], cwd=project, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def planned(proc: subprocess.CompletedProcess) -> dict[str, int]:
    out = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def test_module_plans_the_whole_dag_of_the_project_config(project):
    jobs = planned(snakemake(project, "-n", "--quiet", "rules", installed=False))
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    embedded = [d for d, spec in config["datasets"].items() if spec["kind"] == "embedded"]
    assert jobs["world"] == len(embedded)  # the project's config alone, not merged with config.yaml
    assert jobs["all"] == 1 and jobs["tables"] == 1 and jobs["train_lora_experts_0"] == 1  # the LoRAs in batches


@pytest.mark.slow
def test_module_runs_rules_into_the_project_folder(project):
    snakemake(project, "--until", "world")
    for dataset in ("world", "world_sketch"):
        assert (project / f"results/tiny/data/{dataset}/world/manifest.raw.parquet").is_file()
        assert (project / f"results/tiny/logs/world/{dataset}.log").is_file()


def test_catalog_usage_files():
    """The workflow catalog's standardized usage: .snakemake-workflow-catalog.yml in its
    format, and config/README.md pointing at the config's schema."""
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) <= {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["mandatory-flags"]) == {"desc", "flags"}
    stack = usage["software-stack-deployment"]
    assert set(stack) <= {"conda", "apptainer", "apptainer+conda", "singularity", "singularity+conda"}
    assert stack.get("conda") is True and isinstance(usage["report"], bool)
    readme = (ROOT / "config/README.md").read_text()
    for path in re.findall(r"\]\(\.\./([^)]+)\)", readme):
        assert (ROOT / path).is_file(), f"config/README.md links to {path}, which does not exist"
    assert "workflow/schemas/config.schema.yaml" in readme
