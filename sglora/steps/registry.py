"""The step registry: ``@step`` registers a typed function as ``sglora <name>``, and the
parameter types the steps share (``Backbone``, ``Manifest``, ``Tasks`` ...).

A settings parameter (``prior: PriorSpec``) is built by the command line from its JSON
config section (``{}`` when the flag is absent: the class's defaults). A Python caller may
leave one with the default ``DEFAULT`` out: the step then gets the class's defaults too.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from pathlib import Path
from typing import Callable
from typing import Annotated as A

#: where each settings class of a step's signature lives. They are imported only when a
#: step that takes one runs (``hints``): most live beside torch code, and a light step
#: (check-tasks, tables, ...) should not pay torch's import on every Snakemake job.
SETTINGS_HOME = {
    "MoLESpec": "sglora.baselines.mole.config", "MultitaskSpec": "sglora.baselines.multitask",
    "PDiffSpec": "sglora.baselines.pdiff.config", "CVAESpec": "sglora.generator.settings",
    "TrainSpec": "sglora.experts.training", "SamplingSpec": "sglora.generator.settings",
    "NoisySpec": "sglora.baselines.generator_baselines", "LoraSpec": "sglora.experts.lora",
    "PremiseSpec": "sglora.analyses.premises", "PretrainSpec": "sglora.backbone.pretrain",
    "PriorSpec": "sglora.generator.settings", "CaptionerSpec": "sglora.data.captioning.pretrain",
}


class _Settings(dict):
    """Annotation namespace that imports a settings class on first use."""

    def __missing__(self, name: str):
        if name not in SETTINGS_HOME:
            raise KeyError(name)
        return getattr(importlib.import_module(SETTINGS_HOME[name]), name)


def settings_class(name: str) -> type:
    """A settings class by name (``settings_class("PriorSpec")``), imported on demand."""
    return _Settings()[name]


def hints(fn: Callable) -> dict:
    """A step's parameter types (``Annotated`` kept), importing only the settings it takes."""
    return typing.get_type_hints(fn, localns=_Settings(), include_extras=True)


class _Default:
    """The default of a settings parameter: the settings class's own defaults."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: typing.Any = _Default()

#: step name (``sglora <name>``) -> function, in ``sglora --help`` order
STEPS: dict[str, Callable] = {}
#: marks a parameter as positional on the command line
POSITIONAL = {"positional": True}


def step(name: str, device: str | Callable | None = None, show: Callable | None = None):
    """Register a step. ``device``: the parameter that says where it runs (a device string
    or a settings object with a ``device`` field), or a function of the arguments;
    ``show``: how the CLI prints its result (default: one JSON line)."""

    def register(fn):
        signature = inspect.signature(fn)
        defaulted = {n: fn.__annotations__[n] for n, p in signature.parameters.items() if p.default is DEFAULT}
        if defaulted:
            inner = fn

            @functools.wraps(inner)
            def fn(*args, **kwargs):
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                for param, cls in defaulted.items():
                    if bound.arguments[param] is DEFAULT:
                        bound.arguments[param] = settings_class(cls)()
                return inner(*bound.args, **bound.kwargs)

        fn.step_name, fn.device_of, fn.show = name, device, show
        STEPS[name] = fn
        return fn

    return register


def device_of(fn: Callable, kwargs: dict) -> str | None:
    """The device setting a step will run on, read from its arguments; ``None``: no device."""
    if fn.device_of is None:
        return None
    if callable(fn.device_of):
        return fn.device_of(kwargs)
    value = kwargs[fn.device_of]
    return value if isinstance(value, str) else value.device


Backbone = A[str, "model id or local folder"]
Manifest = A[Path, "task manifest (Parquet)"]
Manifests = A[dict[str, Path], "task manifests", {"metavar": "DATASET=FILE"}]
SPLIT = {"split": ","}  #: a list that also takes comma-separated values
Tasks = A[list[str], "task ids (comma-separated)", SPLIT]
Out = A[Path, "output"]
Threads = A[int | None, "torch threads and DataLoader workers"]
Device = A[str, 'torch device: "auto" = cuda when available, else cpu']
Cache = A[Path | None, "the dataset's image cache (sglora image-cache)"]
Gallery = A[int, "retrieval within galleries of this many test images (0 = whole task)"]
Dataset = A[str | None, "dataset of the tasks (to pick their embeddings)"]
CVAEs = A[list[Path], "trained CVAE folders (every variant and run)"]
Repository = A[Path, "expert repository folder"]
Embeddings = A[Path, "task embedding table"]
Bootstrap = A[int, "bootstrap replicates of the 95% intervals"]
Metrics = A[dict[str, Path], "each group's metric folders ('sglora evaluate')", {"metavar": "GROUP/METHOD=DIR"}]
Groups = A[dict, "JSON of the evaluation groups (config groups)"]
