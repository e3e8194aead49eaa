# Helpers of workflow/rules/generators.smk (issue #15): which groups compare LoRA spaces,
# which have generated LoRAs, and the outputs `all` asks for.

GENERATOR_BASELINES = ("prior_sampling", "noisy_expert")
GENERATIVE = ("sglora", "prior_sampling", "noisy_expert", "pdiff", "cond_pdiff")
SPACES = config.get("spaces") or {}

for _g, _spec in GROUPS.items():
    if "noisy_expert" in _spec["methods"] and "sglora" not in _spec["methods"]:
        raise ValueError(f"config: groups.{_g} uses noisy_expert, whose noise scale comes from SG-LoRA's samples of the "
                         "same tasks; add sglora to its methods")


def space_groups():
    """Unseen groups that compare the LoRA spaces (every one, when `spaces` is configured)."""
    if not SPACES.get("compare"):
        return []
    return [g for g, spec in GROUPS.items() if spec.get("unseen", True)]


def novelty_groups():
    """Groups with generated LoRAs (SG-LoRA's samples among them: the novelty uses its CVAE's space)."""
    return [g for g, spec in GROUPS.items() if "sglora" in spec["methods"]]


def generative_methods(group):
    return [m for m in GROUPS[group]["methods"] if m in GENERATIVE]


def issue15_outputs():
    out = [f"{R}/novelty/{g}.md" for g in novelty_groups()]
    out += [f"{R}/spaces/{g}.md" for g in space_groups()]
    return out
