# Evaluation: one metrics file per (method, task) of every group, LoRAs merged into the weights.


rule evaluate:
    """A method on each task of a group: its candidate LoRA(s) (mean, spread and best of N),
the bare backbone (Zero-Shot CLIP), or MoLE's gated mixture (not mergeable: the gates
depend on the input)."""
    input:
        unpack(evaluation_input),
        manifest=group_manifest,
        checks=group_checks,
        backbone=backbone_input(),
        images=group_images,
    output:
        directory(f"{R}/metrics/{{group}}/{{method}}"),
    log:
        f"{R}/logs/evaluate/{{group}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{group}}/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(METHODS),
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        step=lambda w: METHODS[w.method].evaluate,
        method=evaluation_arguments,
        group=lambda w: w.group,
        tasks=group_tasks,
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora {params.step} --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "{params.method} --group {params.group:q} --image-cache {input.images:q} --gallery {params.gallery} "
        "--device {params.device:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


# The one evaluation rule on the validation tasks: Zero-Shot CLIP or the Oracle, for the premises' headroom.
use rule evaluate as evaluate_validation with:
    input:
        unpack(lambda w: {"candidates": f"{R}/premises/validation/oracle.safetensors"} if w.method == "oracle" else {}),
        manifest=manifest(VALIDATION["dataset"]),
        checks=[check_file(VALIDATION["dataset"], t) for t in VALIDATION["tasks"]],
        backbone=backbone_input(),
        images=image_cache(VALIDATION["dataset"]),
    output:
        directory(validation_metrics("{method}")),
    log:
        f"{R}/logs/premises/evaluate_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/premises/evaluate_{{method}}.tsv"
    wildcard_constraints:
        method="zero_shot|oracle",
    params:
        step="evaluate",
        method=evaluation_arguments,
        group="validation",
        tasks=",".join(VALIDATION["tasks"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
