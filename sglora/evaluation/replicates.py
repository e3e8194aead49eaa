"""Replicates: a run's training repeated under other seeds, on the same world and test tasks.

The bootstrap intervals resample families, tasks, test queries and a generator's runs, but a
run trains its backbone, experts and Oracles once: how much the numbers move with another
training seed (or another CPU, which rounds differently and so takes another training path) is
in no interval. With ``replicates: R`` in the config, the run is replicate 0 and replicates
1 .. R-1 are the same workflow again (Snakemake modules, ``Snakefile``), each in
``<results>/replicates/<k>``, whose every training seed is moved by ``k * REPLICATE_STRIDE``:
the backbone's pretraining, the LoRAs' shared initialisation and data order (experts, Oracles,
the multi-task LoRA), the CVAEs (their runs included), the sampling, MoLE, P-diff and COND
P-Diff. Nothing else differs: the tasks, the test images, the settings, and the world, which
replicates read from replicate 0's folder (:func:`run_results`) rather than generate again.
The tables pool the replicates (:func:`sglora.evaluation.stats.pooled_bootstrap`: replicates
drawn first) and list each replicate's verdict.
"""

from __future__ import annotations

import copy
import dataclasses

#: how far apart the seeds of two replicates are: far more than a run's CVAE runs (seeds
#: ``cvae.seed + r``), so no two replicates share a seed
REPLICATE_STRIDE = 1000


def _training_seeds() -> list[tuple[str, str, int]]:
    """``(config section, key, default)`` of every seed that draws a training or a sample."""
    from ..baselines.mole.config import MoLESpec
    from ..baselines.pdiff.config import PDiffSpec
    from ..experts.lora import LoraSpec
    from ..experts.training import TrainSpec
    from ..generator.settings import CVAESpec, SamplingSpec

    out = []
    for spec, key, section in ((LoraSpec, "init_seed", "lora"), (TrainSpec, "seed", "training"),
                               (CVAESpec, "seed", "cvae"), (SamplingSpec, "seed", "sampling"),
                               (MoLESpec, "seed", "mole"), (PDiffSpec, "seed", "pdiff"),
                               (PDiffSpec, "seed", "cond_pdiff")):  # COND P-Diff: P-diff's settings class
        field = {f.name: f for f in dataclasses.fields(spec)}[key]
        out.append((section, key, field.default))
    return out


def replicate_index(config: dict) -> int:
    """Which replicate a config runs (0: the run itself)."""
    return int(config.get("replicate") or 0)


def check_replicate(config: dict) -> None:
    """A config with ``replicate: k > 0`` must be one :func:`replicate_config` wrote (its
    results folder ``.../replicates/<k>``): set by hand, it would move the pretraining seed
    alone. An error says what to set instead."""
    k = replicate_index(config)
    if k and not str(config.get("results", "")).rstrip("/").endswith(f"/replicates/{k}"):
        raise ValueError(f"config: replicate: {k} is set by the workflow for its training replicates (their results "
                         f"folders end in /replicates/<k>); to rerun the training under other seeds, set "
                         f"replicates: {k + 1} instead")


def pretrain_seed(config: dict) -> int:
    """The backbone's pretraining seed: the run's ``seed`` (which also draws the world), moved
    by the replicate's offset."""
    return int(config.get("seed", 0)) + REPLICATE_STRIDE * replicate_index(config)


def replicate_results(results: str, k: int) -> str:
    """The results folder of replicate ``k`` of a run whose results folder is ``results``."""
    return results.rstrip("/") if k == 0 else f"{results.rstrip('/')}/replicates/{k}"


def run_results(config: dict) -> str:
    """The results folder of the run a config belongs to (replicate 0's): a replicate's config
    (results ``<run>/replicates/<k>``) gives ``<run>``, any other config its own. Replicates
    read the embedded world from there: one world, generated once."""
    results, k = str(config["results"]).rstrip("/"), replicate_index(config)
    return results.removesuffix(f"/replicates/{k}") if k else results


def replicate_config(config: dict, k: int) -> dict:
    """The config of replicate ``k`` of the run ``config`` (replicate 0): its own results
    folder and results page, every training seed moved by ``k * REPLICATE_STRIDE``, and
    ``replicate: k``; the rest, the world's seed included, unchanged. A section the config
    leaves out gets its seed written (its default moved)."""
    if k < 1:
        raise ValueError(f"replicate {k}: replicates 1, 2, ... are the ones a run adds (0 is the run itself)")
    out = copy.deepcopy(config)
    out["replicate"] = k
    out["results"] = replicate_results(config["results"], k)
    title = (config.get("results_page") or {}).get("title", "Results")
    out["results_page"] = {"path": None, "title": f"{title}: replicate {k}"}
    for section, key, default in _training_seeds():
        part = out.setdefault(section, {})
        part[key] = int(part.get(key, default)) + REPLICATE_STRIDE * k
    return out


def training_seed_keys() -> list[tuple[str, str]]:
    """The ``(section, key)`` pairs :func:`replicate_config` moves (the pretraining seed aside)."""
    return [(section, key) for section, key, _ in _training_seeds()]
