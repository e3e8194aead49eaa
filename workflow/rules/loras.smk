# Expert LoRAs (seen tasks) and Oracle LoRAs (unseen tasks): one trainer, in batches of
# LoRAs trained in one process each (lora_batches(), workflow/rules/loras_common.smk), or
# one job per LoRA with `lora_batches: 0`.

for _batch, (_dataset, _tasks) in lora_batches().items():

    rule:
        """Fine-tune CLIP with LoRA on each task's own image-caption pairs, one task after the
        other in one process; keep each one's last M epochs' factors (snapshots) and final adapter."""
        name:
            f"train_lora_{_batch}"
        input:
            manifest=manifest(_dataset),
            checks=[check_file(_dataset, t) for t in _tasks],
            backbone=backbone_input(),
            images=image_cache(_dataset),
            trainer=lambda w: trainer_selection_input(w),
            gate=premise_gate(),
        output:
            [directory(lora_dir(_dataset, t)) for t in _tasks],
        log:
            f"{R}/logs/train_lora/batches/{_batch}.log",
        benchmark:
            f"{R}/benchmarks/train_lora/batches/{_batch}.tsv"
        # the experts first: the repository gates the CVAEs, selection, sampling and the controls
        priority: 10 if _batch.startswith("experts_") else 0
        conda:
            "../../envs/sglora.yaml"
        threads: THREADS
        resources:
            **lora_batch_resources(len(_tasks)),
        params:
            loras=[f"{t}={lora_dir(_dataset, t)}" for t in _tasks],
            lora=as_json(config["lora"]),
            training=lambda w: training_section(w),
            backbone=backbone_param,
        shell:
            "sglora train-loras --backbone {params.backbone:q} --manifest {input.manifest:q} --loras {params.loras:q} "
            "--lora {params.lora:q} --training {params.training:q} --image-cache {input.images:q} "
            "--threads {threads} > {log:q} 2>&1"


if not LORA_BATCHES:

    rule train_lora:
        """Fine-tune CLIP with LoRA on one task's own image-caption pairs; keep the last M
        epochs' factors (snapshots) and the final adapter."""
        input:
            manifest=lambda w: manifest(w.dataset),
            check=lambda w: check_file(w.dataset, w.task),
            backbone=backbone_input(),
            images=lambda w: image_cache(w.dataset),
            trainer=lambda w: trainer_selection_input(w),
            gate=premise_gate(),
        output:
            directory(f"{R}/loras/{{dataset}}/{{task}}"),
        log:
            f"{R}/logs/train_lora/{{dataset}}/{{task}}.log",
        benchmark:
            f"{R}/benchmarks/train_lora/{{dataset}}/{{task}}.tsv"
        conda:
            "../../envs/sglora.yaml"
        threads: THREADS
        resources:
            **heavy_resources("train_lora", mem_mb=4000, runtime=30),
        params:
            lora=as_json(config["lora"]),
            training=lambda w: training_section(w),
            backbone=backbone_param,
        shell:
            "sglora train-lora --backbone {params.backbone:q} --manifest {input.manifest:q} --task {wildcards.task:q} "
            "--out {output:q} --lora {params.lora:q} --training {params.training:q} --image-cache {input.images:q} "
            "--threads {threads} > {log:q} 2>&1"


rule assemble:
    """Stream all experts into the Parquet expert repository."""
    input:
        loras=[lora_dir(EXPERTS["dataset"], t) for t in EXPERTS["tasks"]],
        embeddings=f"{R}/tasks/embeddings.parquet",
    output:
        directory(f"{R}/repository"),
    log:
        f"{R}/logs/assemble.log",
    benchmark:
        f"{R}/benchmarks/assemble.tsv"
    # gates the CVAEs, selection, sampling and the controls
    priority: 30
    conda:
        "../../envs/sglora.yaml"
    params:
        dataset=EXPERTS["dataset"],
    shell:
        "sglora assemble --loras {input.loras:q} --embeddings {input.embeddings:q} --dataset {params.dataset:q} "
        "--out {output:q} > {log:q} 2>&1"
