# Helpers of the description controls' rules (workflow/rules/controls.smk).


def controls_methods(group):
    """The methods of a group run under the controls (sglora/analyses/description_controls.py CONTROLLED)."""
    from sglora.analyses.description_controls import CONTROLLED

    return [m for m in CONTROLLED if m in GROUPS[group]["methods"]]


def controls_groups():
    """With `controls: true`, the unseen groups that evaluate SG-LoRA or Top-K LoRA Weighted."""
    if not config.get("controls"):
        return []
    return [g for g, spec in GROUPS.items() if spec.get("unseen", True) and controls_methods(g)]


def controls_outputs():
    return [f"{R}/tables/{g}.controls.md" for g in controls_groups()]


def controls_world(group):
    """The size of the group's embedded world (its words: family words, member prefixes); "" for another dataset."""
    dataset = config["datasets"][GROUPS[group]["dataset"]]
    if dataset["kind"] != "embedded":
        return ""
    return as_json({key: value for key, value in dataset.get("options", {}).items() if key in ("families", "members")})


def controls_spec(group):
    """What the controls read of a group's config: its tasks' families (sglora.analyses.tables.group_families)
    and title, so that adding a method to the group reruns no control."""
    keys = ("title", "dataset", "tasks", "families")
    return as_json({key: GROUPS[group][key] for key in keys if key in GROUPS[group]})


def check_controls():
    """Fail before any job where a controlled group cannot take another family's descriptions."""
    from sglora.analyses.description_controls import derangement
    from sglora.io import SGLoraError
    from sglora.analyses.tables import group_families

    for g in controls_groups():
        try:
            derangement(GROUPS[g]["tasks"], group_families(GROUPS[g], EMBEDDED, g), f"groups.{g}.tasks")
        except SGLoraError as err:
            raise ValueError(f"config: {err} (controls: true; set controls: false to leave the controls out)") from err


check_controls()
