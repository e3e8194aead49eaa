# Helpers of workflow/rules/loras.smk: which LoRAs are trained together.
#
# Each process pays the imports of torch and transformers (several seconds) before it
# trains a LoRA (tens of seconds at the embedded default's size). So the LoRAs are trained
# in batches, one `sglora train-loras` process per batch. The LoRAs of each reader -- the
# experts (read by assemble), the Oracles of each group that evaluates the Oracle, the
# validation tasks' Oracles when the premises measure the headroom -- are dealt in their
# config order into at most `lora_batches` batches (task i of n batches into batch i mod n),
# rules train_lora_<reader>_<k> with reader experts, oracles_<group> or validation. A LoRA
# two readers read (a seen group's Oracle is its expert) is trained in the first one's batch.
# Each LoRA keeps its folder loras/<dataset>/<task>, byte-identical to its own process's.
#
# Reruns: a batch is one job. A change of the lora or training section reruns every batch,
# as it reran every LoRA. A change of a reader's tasks reruns the batches of that reader
# whose task list changes (a task appended: one batch; a task removed or inserted: the
# batches of the tasks after it) and no batch of another reader: only LoRAs are retrained
# whose reader reruns anyway. `lora_batches: 0`: one job per LoRA (rule train_lora), what
# the paper presets set (their LoRAs train for minutes on a GPU each, and the jobs spread
# over a cluster's GPUs). The setting is read from the config only: which executor runs the
# jobs is not known while the Snakefile is read. Switching between the two retrains the
# LoRAs (their jobs' params differ).

LORA_BATCHES = config.get("lora_batches", 2)


def lora_readers():
    """``(reader, dataset, tasks)`` of every set of LoRAs a rule reads, each LoRA in the first
    set that reads it."""
    readers = [("experts", EXPERTS["dataset"], EXPERTS["tasks"])]
    readers += [
        (f"oracles_{g}", spec["dataset"], spec["tasks"]) for g, spec in GROUPS.items() if "oracle" in spec["methods"]
    ]
    if premise_headroom():
        readers.append(("validation", VALIDATION["dataset"], VALIDATION["tasks"]))
    out, taken = [], set()
    for reader, dataset, tasks in readers:
        tasks = [t for t in dict.fromkeys(tasks) if (dataset, t) not in taken]
        taken.update((dataset, t) for t in tasks)
        if tasks:
            out.append((reader, dataset, tasks))
    return out


def lora_batches():
    """``"<reader>_<k>"`` -> ``(dataset, tasks)``: each reader's tasks dealt round-robin, in
    config order, into ``min(lora_batches, len(tasks))`` batches (none with lora_batches: 0)."""
    batches = {}
    for reader, dataset, tasks in lora_readers() if LORA_BATCHES else []:
        n = min(LORA_BATCHES, len(tasks))
        batches.update({f"{reader}_{k}": (dataset, tasks[k::n]) for k in range(n)})
    return batches


def lora_batch_resources(size):
    """train_lora's resources (config resources.train_lora) for a batch of ``size`` LoRAs:
    the runtime is per LoRA, so the batch asks for ``size`` times it."""
    return heavy_resources("train_lora", mem_mb=4000, runtime=30) | {
        "runtime": lambda w: size * res("train_lora", "runtime", 30)
    }
