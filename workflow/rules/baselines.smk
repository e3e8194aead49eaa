# Baselines: Oracle, the multi-task LoRA, the merging baselines, MoLE, P-diff and COND P-Diff.


rule candidates_oracle:
    """The Oracle: each task's own trained LoRA (final epoch)."""
    input:
        group_loras,
    output:
        f"{R}/candidates/{{group}}/oracle.safetensors",
    log:
        f"{R}/logs/candidates/{{group}}/oracle.log",
    conda:
        "../../envs/sglora.yaml"
    shell:
        "sglora candidates --method oracle --loras {input:q} --out {output:q} > {log:q} 2>&1"


rule train_multitask:
    """The multi-task LoRA: one LoRA on the union of every expert's training pairs (the experts'
rank, targets and trainer), its epochs chosen on the validation tasks."""
    input:
        manifest=manifest(EXPERTS["dataset"]),
        validation_manifest=manifest(VALIDATION["dataset"]),
        checks=[check_file(EXPERTS["dataset"], t) for t in EXPERTS["tasks"]]
        + [check_file(VALIDATION["dataset"], t) for t in VALIDATION["tasks"]],
        backbone=backbone_input(),
        images=image_cache(EXPERTS["dataset"]),
        validation_images=image_cache(VALIDATION["dataset"]),
        trainer=lambda w: trainer_selection_input(w),
    output:
        directory(f"{R}/multitask"),
    log:
        f"{R}/logs/train_multitask.log",
    benchmark:
        f"{R}/benchmarks/train_multitask.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("train_lora", mem_mb=4000, runtime=30),  # the LoRA trainer: train_lora's resources
    params:
        tasks=",".join(EXPERTS["tasks"]),
        validation=",".join(VALIDATION["tasks"]),
        lora=as_json(config["lora"]),
        training=lambda w: training_section(w),
        multitask=as_json(config.get("multitask")),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora train-multitask --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--validation {params.validation:q} --validation-manifest {input.validation_manifest:q} --out {output:q} "
        "--lora {params.lora:q} --training {params.training:q} --multitask {params.multitask:q} "
        "--image-cache {input.images:q} --validation-cache {input.validation_images:q} --gallery {params.gallery} "
        "--device {params.device:q} --threads {threads} > {log:q} 2>&1"


rule candidates_multitask:
    """The multi-task LoRA, the same for every task of a group."""
    input:
        f"{R}/multitask",
    output:
        f"{R}/candidates/{{group}}/multitask.safetensors",
    log:
        f"{R}/logs/candidates/{{group}}/multitask.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        tasks=group_tasks,
    shell:
        "sglora candidates --method multitask --loras {input:q} --tasks {params.tasks:q} --out {output:q} > {log:q} 2>&1"


rule candidates_merging:
    """Model Soups, AdapterSoup, Top-K LoRA Weighted, the nearest expert, the expert mean:
averages of expert factors."""
    input:
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        selection=lambda w: selection_input(w.method, w.group),
    output:
        f"{R}/candidates/{{group}}/{{method}}.safetensors",
    log:
        f"{R}/logs/candidates/{{group}}/{{method}}.log",
    wildcard_constraints:
        method="|".join(methods_where(kind="merging")),
    conda:
        "../../envs/sglora.yaml"
    params:
        tasks=group_tasks,
        dataset=group_dataset,
        seen=group_seen,
        selection=lambda w, input: f"--selection {shlex.quote(input.selection[0])}" if input.selection else "",
        prior=as_json(config["prior"]),
    shell:
        "sglora candidates --method {wildcards.method:q} --tasks {params.tasks:q} --dataset {params.dataset:q} {params.seen} "
        "--repository {input.repository:q} --embeddings {input.embeddings:q} --prior {params.prior:q} "
        "{params.selection} --out {output:q} > {log:q} 2>&1"


rule train_mole:
    """MoLE: per-layer gates over the expert LoRAs, trained on the seen tasks."""
    input:
        manifest=manifest(EXPERTS["dataset"]),
        repository=f"{R}/repository",
        backbone=backbone_input(),
        images=image_cache(EXPERTS["dataset"]),
    output:
        directory(f"{R}/mole"),
    log:
        f"{R}/logs/train_mole.log",
    benchmark:
        f"{R}/benchmarks/train_mole.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("train_mole", mem_mb=8000, runtime=60),
    params:
        tasks=",".join(EXPERTS["tasks"]),
        mole=as_json(config.get("mole")),
        backbone=backbone_param,
    shell:
        "sglora train-mole --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--repository {input.repository:q} --mole {params.mole:q} --image-cache {input.images:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"


rule train_pdiff:
    """P-diff (one unconditional model per seen task) or COND P-Diff (one task-conditioned model)."""
    input:
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
    output:
        directory(f"{R}/{{variant}}"),
    log:
        f"{R}/logs/train_{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/train_{{variant}}.tsv"
    wildcard_constraints:
        variant="|".join(methods_where(candidates="sample-pdiff")),
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("train_pdiff", mem_mb=8000, runtime=60),
    params:
        # P-diff: one model per seen task that a group evaluates; COND P-Diff: one model on all experts
        tasks=lambda w: ",".join(pdiff_tasks() if w.variant == "pdiff" else EXPERTS["tasks"]),
        pdiff=lambda w: as_json(config.get(w.variant)),
        flag=lambda w: "--conditional" if w.variant == "cond_pdiff" else "--no-conditional",
    shell:
        "sglora train-pdiff --repository {input.repository:q} --embeddings {input.embeddings:q} "
        "--tasks {params.tasks:q} {params.flag} --pdiff {params.pdiff:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule candidates_pdiff:
    input:
        model=f"{R}/{{variant}}",
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
    output:
        f"{R}/candidates/{{group}}/{{variant}}.safetensors",
    log:
        f"{R}/logs/candidates/{{group}}/{{variant}}.log",
    wildcard_constraints:
        variant="|".join(methods_where(candidates="sample-pdiff")),
    conda:
        "../../envs/sglora.yaml"
    params:
        tasks=group_tasks,
    shell:
        "sglora sample-pdiff --model {input.model:q} --repository {input.repository:q} "
        "--embeddings {input.embeddings:q} --tasks {params.tasks:q} --out {output:q} > {log:q} 2>&1"
