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
        tasks=group_tasks,
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora {params.step} --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "{params.method} --group {wildcards.group:q} --image-cache {input.images:q} --gallery {params.gallery} "
        "--device {params.device:q} --out {output:q} --threads {threads} > {log:q} 2>&1"
