"""The repository-size study (sglora/analyses/studies.py, workflow/studies/repository_size.smk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sglora.io import SGLoraError
from sglora.evaluation.stats import group_stats
from sglora.analyses.studies import StudySpec, experts_per_family, size_config, size_rows

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

EXPERTS = ["scottish_terrier", "tiger_lily", "boston_terrier", "water_lily", "bull_terrier", "calla_lily"]


def test_experts_per_family_keeps_the_first_n_of_every_family_in_order():
    assert experts_per_family(EXPERTS, 1) == ["scottish_terrier", "tiger_lily"]
    assert experts_per_family(EXPERTS, 2) == ["scottish_terrier", "tiger_lily", "boston_terrier", "water_lily"]
    assert experts_per_family(EXPERTS, 3) == EXPERTS
    with pytest.raises(SGLoraError, match=r"\['lily', 'terrier'\] have fewer than 4"):
        experts_per_family(EXPERTS, 4)
    with pytest.raises(SGLoraError, match="'zebra' is not a class"):
        experts_per_family(EXPERTS + ["zebra"], 1)


def test_size_config_changes_only_the_experts_and_the_results_folder():
    base = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    cfg = size_config(base, 1, "results/study/experts-1")
    assert cfg["experts"]["tasks"] == ["scottish_terrier", "tiger_lily"]
    assert cfg["results"] == "results/study/experts-1"
    assert {k: v for k, v in cfg.items() if k not in ("experts", "results")} == \
           {k: v for k, v in base.items() if k not in ("experts", "results")}
    assert base["experts"]["tasks"] == ["scottish_terrier", "boston_terrier", "tiger_lily", "water_lily"]  # untouched
    base["groups"]["seen"]["tasks"] = ["boston_terrier"]
    with pytest.raises(SGLoraError, match=r"groups.seen: seen tasks \['boston_terrier'\]"):
        size_config(base, 1, "x")


def test_study_spec_refuses_bad_sizes():
    assert StudySpec(sizes=[4, 1, 2]).sizes == [1, 2, 4]
    for bad in ([], [0, 1], [2, 2]):
        with pytest.raises(SGLoraError, match="study.sizes"):
            StudySpec(sizes=bad)
    with pytest.raises(SGLoraError, match="unknown key"):
        StudySpec.from_dict({"size": [1]})


def _result(rng, n_samples: int, runs: list[int], q: int = 8) -> dict:
    ranks = {d: rng.integers(1, 5, size=(n_samples, q)).tolist() for d in ("i2t", "t2i")}
    return {"kind": "retrieval", "ranks": ranks, "runs": runs}


def test_size_rows_are_the_paired_differences_of_each_size():
    rng = np.random.default_rng(0)
    sizes = []
    for n in (2, 1):
        res = {"sglora": {t: _result(rng, 4, [0, 0, 1, 1]) for t in ("a", "b", "c")},
               "topk_weighted": {t: _result(rng, 1, [0]) for t in ("a", "b", "c")}}
        sizes.append({"experts_per_family": n, "experts": ["x"] * 6 * n, "results": res})
    rows = size_rows(sizes, ["topk_weighted"], n_boot=200)
    assert [(r["experts_per_family"], r["metric"]) for r in rows] == [(1, "i2t_r1"), (1, "t2i_r1"), (2, "i2t_r1"), (2, "t2i_r1")]
    for r in rows:
        size = next(s for s in sizes if s["experts_per_family"] == r["experts_per_family"])
        st = group_stats(size["results"], r["metric"], 200)
        assert r["sglora-topk_weighted"] == st.difference("sglora", "topk_weighted")
        assert r["sglora"] == st.interval("sglora") and r["experts"] == 6 * r["experts_per_family"]
    sizes[0]["results"]["topk_weighted"].pop("c")
    with pytest.raises(SGLoraError, match="different test tasks"):
        size_rows(sizes, ["topk_weighted"], n_boot=50)


@pytest.mark.slow
def test_study_runs_each_size_and_compares_them(tmp_path):
    """Two sizes of the tiny config, end to end: two nested pipeline runs, the table, the figure."""
    base = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())  # trimmed to what the study compares
    base["groups"] = {"in_dataset": {**base["groups"]["in_dataset"], "methods": ["zero_shot", "oracle", "topk_weighted", "sglora"]}}
    base["selection"] = {"sglora": {"temperature": [0.0, 1.0]}, "topk_weighted": {"k": [1, 2]}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    study = {"base": str(tmp_path / "base.yaml"), "results": str(tmp_path / "study"), "sizes": [1, 2],
             "group": "in_dataset", "methods": ["topk_weighted", "oracle"]}
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(study))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "workflow/studies/repository_size.smk"), "--cores", "2",
           "--configfile", str(cfg)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "study"
    one = yaml.safe_load((out / "experts-1" / "config.yaml").read_text())
    assert one["experts"]["tasks"] == ["scottish_terrier", "tiger_lily"]
    assert sorted(json.loads((out / "sizes" / "experts-2.json").read_text())["experts"]) == \
           sorted(["scottish_terrier", "boston_terrier", "tiger_lily", "water_lily"])
    rows = json.loads((out / "repository_size.json").read_text())
    assert [(r["experts_per_family"], r["metric"]) for r in rows] == [(1, "i2t_r1"), (1, "t2i_r1"), (2, "i2t_r1"), (2, "t2i_r1")]
    for r in rows:
        d = r["sglora-topk_weighted"]
        assert d["lo"] <= d["estimate"] <= d["hi"]
        assert abs(d["estimate"] - (r["sglora"]["estimate"] - r["topk_weighted"]["estimate"])) < 1e-9
    md = (out / "repository_size.md").read_text()
    assert "SG-LoRA − Top-K LoRA Weighted" in md and "SG-LoRA − Oracle" in md
    assert (out / "figures" / "repository_size.png").read_bytes()[:4] == b"\x89PNG"
    # the backbone is pretrained once, by the first size; the second starts from its bytes
    assert "rule pretrain_backbone" in (out / "logs" / "size_run-1.log").read_text()
    assert "rule pretrain_backbone" not in (out / "logs" / "size_run-2.log").read_text()
    for name in ("model.safetensors", "config.json"):
        assert (out / "experts-2" / "backbone" / name).read_bytes() == (out / "experts-1" / "backbone" / name).read_bytes()
    again = subprocess.run(cmd + ["-n"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr
