# Evaluation: one metrics file per (method, task) of every group, LoRAs merged into the weights.

# the methods evaluated from a candidates file (the registry, sglora/methods.py)
CANDIDATE_METHODS = "|".join(m for m, v in METHODS.items() if v.candidates)


rule evaluate:
    """A method's candidate LoRA(s) on each task of a group (mean, spread and best of N)."""
    input:
        candidates=f"{R}/candidates/{{group}}/{{method}}.safetensors",
        manifest=lambda w: manifest(GROUPS[w.group]["dataset"]),
        checks=group_checks,
        backbone=backbone_input(),
        images=lambda w: image_cache(GROUPS[w.group]["dataset"]),
    output:
        directory(f"{R}/metrics/{{group}}/{{method}}"),
    log:
        f"{R}/logs/evaluate/{{group}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{group}}/{{method}}.tsv"
    wildcard_constraints:
        method=CANDIDATE_METHODS,
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        tasks=lambda w: ",".join(GROUPS[w.group]["tasks"]),
        lora=as_json(config["lora"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora evaluate --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--method {wildcards.method:q} --group {wildcards.group:q} --candidates {input.candidates:q} "
        "--lora {params.lora:q} --image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"


rule evaluate_zero_shot:
    """The bare backbone (Zero-Shot CLIP)."""
    input:
        manifest=lambda w: manifest(GROUPS[w.group]["dataset"]),
        checks=group_checks,
        backbone=backbone_input(),
        images=lambda w: image_cache(GROUPS[w.group]["dataset"]),
    output:
        directory(f"{R}/metrics/{{group}}/zero_shot"),
    log:
        f"{R}/logs/evaluate/{{group}}/zero_shot.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{group}}/zero_shot.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        tasks=lambda w: ",".join(GROUPS[w.group]["tasks"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora evaluate --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--method zero_shot --group {wildcards.group:q} --image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} "
        "--out {output:q} --threads {threads} > {log:q} 2>&1"


rule evaluate_mole:
    """MoLE's gated mixture (not mergeable: the gates depend on the input)."""
    input:
        mole=f"{R}/mole",
        manifest=lambda w: manifest(GROUPS[w.group]["dataset"]),
        checks=group_checks,
        backbone=backbone_input(),
        images=lambda w: image_cache(GROUPS[w.group]["dataset"]),
    output:
        directory(f"{R}/metrics/{{group}}/mole"),
    log:
        f"{R}/logs/evaluate/{{group}}/mole.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{group}}/mole.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        tasks=lambda w: ",".join(GROUPS[w.group]["tasks"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora evaluate-mole --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--mole {input.mole:q} --group {wildcards.group:q} --image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} "
        "--out {output:q} --threads {threads} > {log:q} 2>&1"
