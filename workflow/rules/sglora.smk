# SG-LoRA itself: the CVAE on the repository, then samples for each group's tasks.


rule train_cvae:
    """Train the conditional VAE (Eq. 8) on every snapshot of the repository."""
    input:
        f"{R}/repository",
    output:
        directory(f"{R}/cvae"),
    params:
        cvae=as_json(config["cvae"]),
        prior=as_json(config["prior"]),
    threads: THREADS
    resources:
        gpu=lambda w: res("train_cvae", "gpu", 1 if PRETRAINED else 0),
        mem_mb=lambda w: res("train_cvae", "mem_mb", 8000),
        runtime=lambda w: res("train_cvae", "runtime", 60),
    conda:
        "../../envs/sglora.yaml"
    log:
        f"{R}/logs/train_cvae.log",
    benchmark:
        f"{R}/benchmarks/train_cvae.tsv"
    shell:
        "sglora train-cvae --repository {input:q} --cvae {params.cvae:q} --prior {params.prior:q} "
        "--out {output:q} --threads {threads} > {log:q} 2>&1"


rule sample_sglora:
    """N LoRAs per task of a group from the trained CVAE (Eq. 9), as candidates and as
    PEFT adapter folders (alpha of the experts used and the seed in their metadata)."""
    input:
        cvae=f"{R}/cvae",
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
    output:
        candidates=f"{R}/candidates/{{group}}/sglora.safetensors",
        adapters=directory(f"{R}/samples/{{group}}"),
    params:
        tasks=lambda w: ",".join(GROUPS[w.group]["tasks"]),
        dataset=lambda w: GROUPS[w.group]["dataset"],
        prior=as_json(config["prior"]),
        sampling=as_json(config["sampling"]),
    conda:
        "../../envs/sglora.yaml"
    log:
        f"{R}/logs/sample_sglora/{{group}}.log",
    shell:
        "sglora candidates --method sglora --tasks {params.tasks:q} --dataset {params.dataset:q} "
        "--repository {input.repository:q} --embeddings {input.embeddings:q} --cvae {input.cvae:q} "
        "--prior {params.prior:q} --sampling {params.sampling:q} --adapters {output.adapters:q} "
        "--out {output.candidates:q} > {log:q} 2>&1"
