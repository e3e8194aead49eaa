"""The benchmark's premises: the measures against hand-computed cases, a failed premise
stopping an embedded run with the numbers, and the DAG feeding them validation tasks only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sglora.io import SGLoraError
from sglora.analyses.premises import PremiseSpec, check_premises, headroom, nearest_in_family, render_premises, task_family


def test_task_family_is_the_family_word():
    assert task_family("fox terrier") == "terrier" and task_family("calla lily") == "lily"
    assert task_family("zebra") is None


def test_nearest_in_family_against_a_hand_made_case():
    keys = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    tasks, fams = ["a1", "a2", "b1"], ["a", "a", "b"]
    queries = {"q_a": np.array([0.2, 1.0]), "q_b": np.array([0.0, 1.0]), "q_none": np.array([1.0, 0.0])}
    res = nearest_in_family(queries, {"q_a": "a", "q_b": "b", "q_none": None}, keys, tasks, fams)
    assert res["tasks"]["q_a"]["nearest"] == "b1" and not res["tasks"]["q_a"]["in_family"]
    assert res["tasks"]["q_b"]["in_family"] and "q_none" not in res["tasks"]
    assert res["share"] == 0.5
    # leave-one-out: an expert is never its own nearest
    loo = nearest_in_family(dict(zip(tasks, keys)), dict(zip(tasks, fams)), keys, tasks, fams)
    assert loo["tasks"]["a1"]["nearest"] == "a2" and loo["tasks"]["b1"]["nearest"] != "b1"


def test_headroom_is_oracle_minus_zero_shot():
    zs = {"t1": {"i2t_r1": 10.0, "t2i_r1": 20.0}, "t2": {"i2t_r1": 0.0, "t2i_r1": 10.0}}
    orc = {"t1": {"i2t_r1": 30.0, "t2i_r1": 30.0}, "t2": {"i2t_r1": 10.0, "t2i_r1": 10.0}}
    h = headroom(zs, orc)
    assert h["gain"] == pytest.approx((15.0 + 5.0) / 2) and h["i2t_r1"] == pytest.approx(15.0)


def _metrics(root, group, method, values):
    d = root / group / method
    d.mkdir(parents=True)
    for t, v in values.items():
        (d / f"{t}.json").write_text(json.dumps({"mean": {"i2t_r1": v, "t2i_r1": v}}))
    return d


@pytest.mark.parametrize("gain,enforce", [(20.0, True), (20.0, False), (2.0, False), (2.0, True)])
def test_check_premises_reports_and_enforces(tmp_path, tiny_world, tiny_clip, tiny_repo, tiny_embeddings, gain, enforce):
    from sglora.backbone.embed import read_embeddings
    from sglora.experts.repository import Repository

    repo = Repository(tiny_repo)
    emb = read_embeddings(tiny_embeddings)
    families = {t: task_family(r["task_name"]) for t, r in emb.items()}
    tasks = ["yorkshire_terrier", "calla_lily"]
    zs = _metrics(tmp_path, "validation", "zero_shot", {t: 10.0 for t in tasks})
    orc = _metrics(tmp_path, "validation", "oracle", {t: 10.0 + gain for t in tasks})
    spec = PremiseSpec(nearest_in_family=0.0, oracle_gain=10.0)

    def run():
        return check_premises(tiny_clip, tiny_world / "manifest.parquet", emb, repo.experts(), repo.layout,
                              repo.lora.scaling, {"validation": tasks, "transfer": tasks}, families,
                              {"validation": (zs, orc)}, spec, enforce)

    if gain < 10 and enforce:
        with pytest.raises(SGLoraError, match=r"premises do not hold.*Oracle minus Zero-Shot R@1 \(validation\): 2.00 < 10.00"):
            run()
        return
    if enforce:  # the headroom holds; a toy world may still fail family transfer, never the headroom
        try:
            run()
        except SGLoraError as err:
            assert "Oracle minus" not in str(err).split("\n")[0] and "same-family" in str(err)
        return
    res = run()
    head = [v for v in res["verdicts"] if v["premise"].startswith("Oracle")][0]
    assert head["value"] == pytest.approx(gain) and head["passed"] is (gain >= 10)
    ft = res["family_transfer"]
    assert ft["tasks"] == 2 and set(ft["per_task"]) == set(tasks)
    md = render_premises(res)
    assert "Oracle minus Zero-Shot" in md and ("**no**" in md) is (gain < 10 or ft["wins"] < 2)
    assert "on the validation tasks" in md and set(res["nearest"]["validation"]["tasks"]) == set(tasks)


def test_the_premises_read_no_test_task(tmp_path):
    """In config.yaml's DAG the premises rule reads the validation tasks' Zero-Shot and Oracle
    metrics (their own Oracle LoRAs), never a test group's metrics, LoRAs or task ids."""
    import re

    import yaml

    from conftest import ROOT
    from test_presets import dry_run_jobs

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    results = tmp_path / "results"
    cfg["results"] = str(results)
    validation = set(cfg["validation"]["tasks"])
    test_tasks = {t for g in cfg["groups"].values() if g.get("unseen", True) for t in g["tasks"]}
    jobs = dry_run_jobs(cfg, tmp_path)

    def named(job):
        return set(re.split(r"[\s,/'=]+", " ".join(job["input"]) + " " + job["shell"]))

    (premises,) = [j for j in jobs if j["rule"] == "premises"]
    assert not named(premises) & test_tasks, named(premises) & test_tasks
    assert not [p for p in premises["input"] if p.startswith((f"{results}/metrics", f"{results}/candidates"))]
    assert validation <= named(premises)
    metrics = {p for p in premises["input"] if "/premises/" in p}
    assert len(metrics) == 2  # Zero-Shot and the Oracle on the validation tasks
    feeding = [j for j in jobs if j["rule"] in ("evaluate_validation", "candidates_validation_oracle")]
    assert {j["rule"] for j in feeding} == {"evaluate_validation", "candidates_validation_oracle"}
    for job in feeding:
        assert not named(job) & test_tasks and validation <= named(job), job
    (oracle,) = [j for j in feeding if j["rule"] == "candidates_validation_oracle"]
    assert sorted(oracle["input"]) == sorted(f"{results}/loras/{cfg['validation']['dataset']}/{t}" for t in validation)


def _embeddings(path, rows):
    """A task embedding table in embed's format from ``(dataset, task name, text vector)``."""
    import pyarrow as pa

    from sglora.io import write_table

    schema = pa.schema([("dataset", pa.string()), ("task", pa.string()), ("task_name", pa.string()),
                        ("description", pa.string()), ("text_embedding", pa.list_(pa.float32(), 2)),
                        ("visual_embedding", pa.list_(pa.float32(), 2))])
    write_table(path, pa.Table.from_pylist([{"dataset": d, "task": n.replace(" ", "_"), "task_name": n,
                                              "description": f"a photo of a {n}", "text_embedding": v,
                                              "visual_embedding": [1.0, 0.0]} for d, n, v in rows], schema=schema))
    return path


def test_the_description_premise_stops_a_failing_world_before_any_lora(tmp_path):
    """From the embedding table alone: a validation task whose nearest expert is of another
    family fails the premise; on an embedded dataset that is an error naming the value and
    the task, and no file is written; not enforced, the file says the same numbers."""
    from sglora.analyses.premises import run_description_premises

    emb = _embeddings(tmp_path / "emb.parquet", [
        ("world", "fox terrier", [1.0, 0.0]), ("world", "bull terrier", [0.9, 0.2]),
        ("world", "calla lily", [0.0, 1.0]), ("world", "peace lily", [0.2, 0.9]),
        ("world", "cairn terrier", [0.95, 0.1]),  # validation: nearest fox_terrier (in family)
        ("world", "easter lily", [0.8, 0.3]),  # validation: nearest bull_terrier (another family)
    ])
    experts = ["fox_terrier", "bull_terrier", "calla_lily", "peace_lily"]
    tasks = ["cairn_terrier", "easter_lily"]
    out = tmp_path / "descriptions.json"
    with pytest.raises(SGLoraError, match=r"before any LoRA.*validation tasks\): 0.50 < 0.90(?s:.*)easter_lily -> bull_terrier"):
        run_description_premises(emb, "world", experts, tasks, {"world"}, PremiseSpec(), out)
    assert not out.exists()
    res = run_description_premises(emb, "world", experts, tasks, {"world"}, PremiseSpec(enforce=False), out)
    assert json.loads(out.read_text())["nearest"]["validation"]["share"] == res["nearest"]["validation"]["share"] == 0.5
    assert res["nearest"]["loo"]["share"] == 1.0 and not res["enforced"]
    # a dataset without families (not embedded): the premise is not defined, nothing is enforced
    res = run_description_premises(emb, "world", experts, tasks, set(), PremiseSpec(), out)
    assert res["nearest"]["validation"]["share"] is None and not res["enforced"]
    with pytest.raises(SGLoraError, match=r"no embedding of the tasks \['zebra'\]"):
        run_description_premises(emb, "world", experts, ["zebra"], {"world"}, PremiseSpec(), out)


def test_the_description_premise_agrees_with_the_full_check(tmp_path, tiny_world, tiny_clip, tiny_repo, tiny_embeddings):
    """Measured from the embedding table before the LoRAs, premise 1 is what the full check
    measures from the repository after them."""
    from sglora.analyses.premises import run_description_premises
    from sglora.backbone.embed import read_embeddings
    from sglora.experts.repository import Repository

    repo = Repository(tiny_repo)
    emb = read_embeddings(tiny_embeddings)
    families = {t: task_family(r["task_name"]) for t, r in emb.items()}
    tasks = ["yorkshire_terrier", "calla_lily"]
    zs = _metrics(tmp_path, "validation", "zero_shot", {t: 10.0 for t in tasks})
    full = check_premises(tiny_clip, tiny_world / "manifest.parquet", emb, repo.experts(), repo.layout, repo.lora.scaling,
                          {"validation": tasks, "transfer": []}, families, {"validation": (zs, zs)},
                          PremiseSpec(enforce=False), False)
    early = run_description_premises(tiny_embeddings, "world", repo.experts().tasks, tasks, {"world"},
                                     PremiseSpec(enforce=False), tmp_path / "d.json")
    for part in ("validation", "loo"):
        assert early["nearest"][part]["share"] == full["nearest"][part]["share"]
        assert ({t: r["nearest"] for t, r in early["nearest"][part]["tasks"].items()}
                == {t: r["nearest"] for t, r in full["nearest"][part]["tasks"].items()})


def test_every_lora_waits_for_the_description_premise(tmp_path):
    """In config.yaml's DAG every LoRA-training job reads the description premise's file, whose
    job reads the embeddings and names validation and expert tasks only; with
    ``premises.enforce: false`` nothing waits for it."""
    import yaml

    from conftest import ROOT
    from test_presets import dry_run_jobs

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    results = tmp_path / "results"
    cfg["results"] = str(results)
    gate = f"{results}/premises/descriptions.json"
    test_tasks = {t for g in cfg["groups"].values() if g.get("unseen", True) for t in g["tasks"]}
    jobs = dry_run_jobs(cfg, tmp_path)
    trainers = [j for j in jobs if j["rule"].startswith(("train_lora", "select_training"))]
    assert trainers and all(gate in j["input"] for j in trainers), [j["rule"] for j in trainers if gate not in j["input"]]
    (early,) = [j for j in jobs if j["rule"] == "premises_descriptions"]
    assert early["input"] == [f"{results}/tasks/embeddings.parquet"]
    named = set(early["shell"].replace(",", " ").replace("'", " ").split())
    assert not named & test_tasks and set(cfg["validation"]["tasks"]) <= named
    cfg["premises"] = {**(cfg.get("premises") or {}), "enforce": False}
    jobs = dry_run_jobs(cfg, tmp_path)
    assert not [j for j in jobs if j["rule"] == "premises_descriptions" or gate in j["input"]]
