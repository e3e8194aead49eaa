"""Every method the pipeline compares, in one registry.

The command line (``--method`` choices), the tables and figures (labels, row order,
which rows compete for "best"), the selection grid (which settings a method may vary),
the config checks and the Snakemake rules (which step writes a method's candidates) all
read :data:`METHODS`. Adding a method is one entry here plus its module.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("backbone", "trained", "merging", "generative")


@dataclass(frozen=True)
class Method:
    """One method the pipeline compares: its id, label, kind and how its candidates are made."""

    id: str  #: the method's id in configs, file names and metric files
    label: str  #: its name in tables and figures
    kind: str  #: "backbone" (no LoRA), "trained" (on data), "merging" (of expert LoRAs) or "generative"
    seen_only: bool = False  #: only for seen tasks (it needs the task among the experts)
    ranked: bool = True  #: competes for "best" in the tables (not the Oracle: it trains on the task's own data)
    candidates: str | None = "candidates"  #: the ``sglora`` step that writes its candidate LoRAs (None: none)
    settings: tuple[str, ...] = ()  #: the settings a selection grid may vary (sglora/evaluation/method_selection.py)
    evaluate: str = "evaluate"  #: the ``sglora`` step that evaluates it on a group's tasks
    samples_of: str | None = None  #: the method whose generator it samples, when not its own

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.id}: kind {self.kind!r} is not one of {KINDS}")


#: in the tables' row order
METHODS: dict[str, Method] = {m.id: m for m in (
    Method("zero_shot", "Zero-Shot CLIP", "backbone", candidates=None),
    Method("oracle", "Oracle", "trained", ranked=False),
    Method("multitask", "Multi-task LoRA", "trained"),
    Method("model_soups", "Model Soups", "merging"),
    Method("adaptersoup", "AdapterSoup", "merging", settings=("k",)),
    Method("topk_weighted", "Top-K LoRA Weighted", "merging", settings=("k", "tau")),
    Method("nearest_expert", "Nearest expert", "merging"),
    Method("expert_mean", "Expert mean", "merging"),
    Method("mole", "MoLE", "trained", candidates=None, evaluate="evaluate-mole"),
    Method("pdiff", "P-diff", "generative", seen_only=True, candidates="sample-pdiff"),
    Method("cond_pdiff", "COND P-Diff", "generative", seen_only=True, candidates="sample-pdiff"),
    Method("sglora", "SG-LoRA", "generative", settings=("condition", "k", "tau", "augment", "describe",
                                                               "temperature", "average")),
    Method("sglora_paper", "SG-LoRA (paper-faithful)", "generative", samples_of="sglora"),
    Method("prior_sampling", "Prior sampling", "generative", candidates="generator-candidates"),
    Method("noisy_expert", "Noisy nearest expert", "generative", candidates="generator-candidates"),
)}


def label(method: str) -> str:
    """A method's label (its id if it is not registered)."""
    return METHODS[method].label if method in METHODS else method


def methods_where(**want) -> list[str]:
    """Ids of the methods whose fields equal ``want`` (``methods_where(kind="merging")``), in registry order."""
    return [m.id for m in METHODS.values() if all(getattr(m, k) == v for k, v in want.items())]
