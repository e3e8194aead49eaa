"""SG-LoRA's grid, read from a config: every method's selection grid (SG-LoRA's completed
with the defaults of the settings it does not vary), the paper-faithful point, and the CVAE
trainings the grid needs, each with its folder name under ``cvae/``.

Torch-free: the Snakefile builds its jobs from these (workflow/rules/common.smk).
"""

from __future__ import annotations

import itertools
from dataclasses import fields

from .settings import CVAE_VARIANT_OFF, VARIANTS, CVAESpec, SamplingSpec
from .settings import PriorSpec

#: settings of SG-LoRA that need a CVAE of their own (the others act at sampling time)
CVAE_SETTINGS = ("condition", "k", "tau", *CVAE_VARIANT_OFF)
#: the paper's sampling temperature: every sample drawn from the learned p(z | c)
PAPER_TEMPERATURE = 1.0


def grid_points(axes: dict[str, list]) -> list[dict]:
    """The cartesian product of a method's grid, in config order (``{}`` for no grid)."""
    keys = list(axes or {})
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _specs(config: dict) -> tuple[CVAESpec, PriorSpec, SamplingSpec]:
    return (CVAESpec.from_dict(config.get("cvae")), PriorSpec.from_dict(config.get("prior")),
            SamplingSpec.from_dict(config.get("sampling")))


def sampling_section(config: dict) -> dict:
    """Config ``sampling`` with the defaults of :class:`SamplingSpec` filled in; a variant
    (``average``) only when the config sets it: a config without variants never names one."""
    defaults = {f.name: f.default for f in fields(SamplingSpec) if f.name not in VARIANTS}
    return defaults | (config.get("sampling") or {})


def selection_grid(config: dict) -> dict[str, dict[str, list]]:
    """Every method's grid (config ``selection``); SG-LoRA's is completed with the config's
    settings (cvae.condition, prior.k, prior.tau, sampling.temperature) where it does not vary
    them. A generator variant (augment, describe, average) is an axis only when the grid
    names it or the config turns it on: a config without variants never names one."""
    grid = {m: dict(axes) for m, axes in (config.get("selection") or {}).items()}
    cvae, prior, sampling = _specs(config)
    defaults = {"condition": [cvae.condition], "k": [prior.k], "tau": [prior.tau],
                "temperature": [sampling.temperature]}
    sglora = grid.get("sglora", {})
    for key, (section, off) in VARIANTS.items():
        value = (config.get(section) or {}).get(key, off)
        if key in sglora or value != off:
            defaults[key] = [value]
    grid["sglora"] = {key: sglora.get(key, default) for key, default in defaults.items()}
    return grid


def paper_point(config: dict) -> dict:
    """SG-LoRA's paper-faithful grid point: the paper's sampling (temperature 1, N samples
    each a candidate) and generator (one condition per expert, no description in it), with
    the config's own condition, k and tau (config.yaml's are the paper's k = 4, tau = 0.05)."""
    cvae, prior, _ = _specs(config)
    point = {"condition": cvae.condition, "k": prior.k, "tau": prior.tau, "temperature": PAPER_TEMPERATURE}
    return point | {key: off for key, (_, off) in VARIANTS.items()}


def variant_name(variant: dict) -> str:
    """A CVAE training's folder name, ``<condition>-k<k>-tau<tau>[-aug<A>][-describe<0|1>]``:
    a variant key is in the name only when the grid has it."""
    name = f"{variant['condition']}-k{variant['k']}-tau{variant['tau']}"
    if "augment" in variant:
        name += f"-aug{int(variant['augment'])}"
    if "describe" in variant:
        name += f"-describe{int(bool(variant['describe']))}"
    return name


def cvae_variants(config: dict) -> dict[str, dict]:
    """The CVAE trainings SG-LoRA's grid needs, by folder name: one per combination of its
    CVAE settings (condition, k, tau[, augment, describe]); plus the paper-faithful
    point's when a group has the ``sglora_paper`` row and the grid lacks it."""
    grid = selection_grid(config)["sglora"]
    keys = [key for key in CVAE_SETTINGS if key in grid]
    variants = {variant_name(v): v for v in grid_points({key: grid[key] for key in keys})}
    if any("sglora_paper" in spec["methods"] for spec in (config.get("groups") or {}).values()):
        paper = {key: paper_point(config)[key] for key in keys}
        variants.setdefault(variant_name(paper), paper)
    return variants


def cvae_training(config: dict, variant: dict, run: int) -> dict[str, dict]:
    """The ``cvae`` and ``prior`` sections of one CVAE training: the config's, with the
    variant's settings and the run's seed (``cvae.seed + run``)."""
    cvae = (config["cvae"] | {key: variant[key] for key in ("condition", *CVAE_VARIANT_OFF) if key in variant}
            | {"seed": CVAESpec.from_dict(config["cvae"]).seed + run})
    return {"cvae": cvae, "prior": config["prior"] | {"k": variant["k"], "tau": variant["tau"]}}
