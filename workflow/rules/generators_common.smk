# Helpers of workflow/rules/generators.smk: which groups compare LoRA spaces,
# which have generated LoRAs, and the outputs `all` asks for.

# the generator baselines (written by `sglora generator-candidates`) and the methods whose
# generated LoRAs the novelty measures, each generator once (the registry, sglora/methods.py)
GENERATOR_BASELINES = methods_where(candidates="generator-candidates")
GENERATIVE = methods_where(kind="generative", samples_of=None)
SPACES = config.get("spaces") or {}

for _g, _spec in GROUPS.items():
    if "noisy_expert" in _spec["methods"] and "sglora" not in _spec["methods"]:
        raise ValueError(
            f"config: groups.{_g} uses noisy_expert, whose noise scale comes from SG-LoRA's samples of the "
            "same tasks; add sglora to its methods"
        )


def space_groups():
    """Unseen groups that compare the LoRA spaces (every one, when `spaces` is configured)."""
    if not SPACES.get("compare"):
        return []
    return [g for g, spec in GROUPS.items() if spec["unseen"]]


def novelty_groups():
    """With `novelty: true`, the groups with generated LoRAs (SG-LoRA's samples among them: the
    novelty uses its CVAE's space)."""
    if not config.get("novelty"):
        return []
    return [g for g, spec in GROUPS.items() if "sglora" in spec["methods"]]


def generative_methods(group):
    return [m for m in GROUPS[group]["methods"] if m in GENERATIVE]


def analysis_outputs():
    out = [f"{R}/novelty/{g}.md" for g in novelty_groups()]
    out += [f"{R}/spaces/{g}.md" for g in space_groups()]
    out += [f"{R}/spaces/runs/{g}.md" for g in compare_groups()]
    return out


# --- the trainer's settings chosen on validation tasks (trainer_selection, e.g. frozen_a's lr) ---

TRAINER_GRID = config.get("trainer_selection") or {}


def trainer_selection_input(wildcards=None):
    """The trainer selection file as an input of train_lora ([] without trainer_selection)."""
    return [checkpoints.select_training.get().output[0]] if TRAINER_GRID else []


def training_section(wildcards=None):
    """The training section a LoRA is trained with: config `training`, with the settings of
    `trainer_selection` chosen on the validation tasks applied (without trainer_selection:
    config `training` unchanged)."""
    if not TRAINER_GRID:
        return as_json(config["training"])
    chosen = json.loads(Path(checkpoints.select_training.get().output[0]).read_text())["chosen"]["training"]
    return as_json(config["training"] | chosen)


# --- another run of the same world in another LoRA space (compare_runs: {factors: results/embedded}) ---

COMPARE_RUNS = config.get("compare_runs") or {}
RUN_SPACE = "frozen_a" if config["training"].get("freeze_a") else "factors"


def compare_groups():
    return [g for g, spec in GROUPS.items() if spec["unseen"]] if COMPARE_RUNS else []


def compared_methods(group):
    return [m for m in GROUPS[group]["methods"] if m not in ("zero_shot", "oracle")]


def other_run_metrics(group):
    """The metric folders of the other runs (made by their own DAGs: run those configs first)."""
    return [
        f"{root.rstrip('/')}/metrics/{group}/{m}" for root in COMPARE_RUNS.values() for m in compared_methods(group)
    ]
