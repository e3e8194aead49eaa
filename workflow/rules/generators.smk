# What the generator adds over retrieval: the generator baselines (prior sampling, noisy
# nearest expert), the LoRA spaces of the merging baselines, and the novelty of generated LoRAs.
# Helpers: generators_common.smk.


rule candidates_generator:
    """Prior sampling (N draws of N(mu*, sigma*^2), no CVAE) or the noisy nearest expert (the
top-1 expert plus noise of SG-LoRA's spread): as many samples and runs as SG-LoRA."""
    input:
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        selection=lambda w: selection_file("sglora", w.group),
        sglora=lambda w: [f"{R}/candidates/{w.group}/sglora.safetensors"] if w.method == "noisy_expert" else [],
    output:
        f"{R}/candidates/{{group}}/{{method}}.safetensors",
    log:
        f"{R}/logs/candidates/{{group}}/{{method}}.log",
    wildcard_constraints:
        method="|".join(GENERATOR_BASELINES),
    conda:
        "../../envs/sglora.yaml"
    params:
        tasks=group_tasks,
        dataset=group_dataset,
        seen=group_seen,
        sglora=lambda w, input: f"--sglora {shlex.quote(input.sglora[0])}" if input.sglora else "",
        prior=as_json(config["prior"]),
        sampling=as_json(SAMPLING),
        spec=lambda w: as_json(config.get("noisy_expert")) if w.method == "noisy_expert" else "{}",
    shell:
        "sglora generator-candidates --method {wildcards.method:q} --tasks {params.tasks:q} --dataset {params.dataset:q} "
        "{params.seen} --repository {input.repository:q} --embeddings {input.embeddings:q} --selection {input.selection:q} "
        "--prior {params.prior:q} --sampling {params.sampling:q} {params.sglora} --noisy-expert {params.spec:q} "
        "--out {output:q} > {log:q} 2>&1"


rule spaces_select:
    """Each merging method's settings chosen on the validation tasks within each LoRA space."""
    input:
        manifest=manifest(VALIDATION["dataset"]),
        images=image_cache(VALIDATION["dataset"]),
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        backbone=backbone_input(),
    output:
        f"{R}/spaces/selection.json",
    log:
        f"{R}/logs/spaces_select.log",
    benchmark:
        f"{R}/benchmarks/spaces_select.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("select", mem_mb=4000, runtime=60),
    params:
        tasks=",".join(VALIDATION["tasks"]),
        dataset=VALIDATION["dataset"],
        spaces=as_json(SPACES),
        grid=as_json({m: config.get("selection", {}).get(m, {}) for m in SPACES.get("methods", [])}),
        prior=as_json(config["prior"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora spaces-select --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--dataset {params.dataset:q} --spaces {params.spaces:q} --grid {params.grid:q} --repository {input.repository:q} "
        "--embeddings {input.embeddings:q} --prior {params.prior:q} --image-cache {input.images:q} "
        "--gallery {params.gallery} --device {params.device:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule spaces_evaluate:
    """Every (merging method, LoRA space) on a group's test tasks with its validation-chosen
settings; the table of spaces (validation score, test R@1, paired difference to factors)."""
    input:
        selection=f"{R}/spaces/selection.json",
        manifest=group_manifest,
        images=group_images,
        checks=group_checks,
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        backbone=backbone_input(),
    output:
        out=directory(f"{R}/spaces/{{group}}"),
        md=report(f"{R}/spaces/{{group}}.md", caption="../report/spaces.rst", category="LoRA spaces"),
        csv=f"{R}/spaces/{{group}}.csv",
    log:
        f"{R}/logs/spaces_evaluate/{{group}}.log",
    benchmark:
        f"{R}/benchmarks/spaces_evaluate/{{group}}.tsv"
    wildcard_constraints:
        group="|".join(space_groups()) or "^$",
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        tasks=group_tasks,
        dataset=group_dataset,
        title=group_title,
        prior=as_json(config["prior"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora spaces-evaluate --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--dataset {params.dataset:q} --group {wildcards.group:q} --title {params.title:q} --selection {input.selection:q} "
        "--repository {input.repository:q} --embeddings {input.embeddings:q} --prior {params.prior:q} "
        "--image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} --out {output.out:q} "
        "--markdown {output.md:q} --csv {output.csv:q} --threads {threads} > {log:q} 2>&1"


rule novelty:
    """Novelty of a group's generated LoRAs: distance to the nearest training snapshot against
the repository's own scales, and retrieval agreement with that snapshot (evaluated here)."""
    input:
        candidates=lambda w: [f"{R}/candidates/{w.group}/{m}.safetensors" for m in generative_methods(w.group)],
        metrics=lambda w: [f"{R}/metrics/{w.group}/{m}" for m in generative_methods(w.group)],
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        cvae=f"{R}/cvae/selected",
        manifest=group_manifest,
        images=group_images,
        backbone=backbone_input(),
    output:
        json=f"{R}/novelty/{{group}}.json",
        md=report(f"{R}/novelty/{{group}}.md", caption="../report/novelty.rst", category="Novelty"),
        png=report(f"{R}/novelty/{{group}}.png", caption="../report/novelty.rst", category="Novelty"),
        pdf=f"{R}/novelty/{{group}}.pdf",
    log:
        f"{R}/logs/novelty/{{group}}.log",
    benchmark:
        f"{R}/benchmarks/novelty/{{group}}.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        candidates=lambda w, input: [f"{m}={p}" for m, p in zip(generative_methods(w.group), input.candidates)],
        metrics=lambda w, input: [f"{m}={p}" for m, p in zip(generative_methods(w.group), input.metrics)],
        tasks=group_tasks,
        dataset=group_dataset,
        title=group_title,
        seen=group_seen,
        prior=as_json(config["prior"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora novelty --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--dataset {params.dataset:q} --group {wildcards.group:q} --title {params.title:q} {params.seen} "
        "--repository {input.repository:q} --embeddings {input.embeddings:q} --cvae {input.cvae:q} "
        "--candidates {params.candidates:q} --metrics {params.metrics:q} --prior {params.prior:q} "
        "--image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} --out {output.json:q} "
        "--markdown {output.md:q} --figure {output.png:q} --threads {threads} > {log:q} 2>&1"


checkpoint select_training:
    """The trainer's settings (trainer_selection, e.g. the learning rate of the frozen_a space)
chosen on the validation tasks: one LoRA per grid point and validation task, trained on that
task's own pairs and scored on its test split. Every expert and Oracle then trains with them."""
    input:
        manifest=manifest(VALIDATION["dataset"]),
        images=image_cache(VALIDATION["dataset"]),
        checks=[check_file(VALIDATION["dataset"], t) for t in VALIDATION["tasks"]],
        backbone=backbone_input(),
        gate=premise_gate(),
    output:
        f"{R}/selection/training.json",
    log:
        f"{R}/logs/select_training.log",
    benchmark:
        f"{R}/benchmarks/select_training.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("train_lora", mem_mb=4000, runtime=30),
    params:
        tasks=",".join(VALIDATION["tasks"]),
        grid=as_json(TRAINER_GRID),
        lora=as_json(config["lora"]),
        training=as_json(config["training"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora select-training --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--grid {params.grid:q} --lora {params.lora:q} --training {params.training:q} --image-cache {input.images:q} "
        "--gallery {params.gallery} --device {params.device:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule compare_runs:
    """This run against another run of the same world in another LoRA space (e.g. frozen_a
against the default factors run): every method, with paired differences."""
    input:
        own=lambda w: [f"{R}/metrics/{w.group}/{m}" for m in compared_methods(w.group)],
        other=lambda w: other_run_metrics(w.group),
        selection=f"{R}/selection/selection.json",
        other_selection=[f"{root.rstrip('/')}/selection/selection.json" for root in COMPARE_RUNS.values()],
    output:
        report(f"{R}/spaces/runs/{{group}}.md", caption="../report/spaces.rst", category="LoRA spaces"),
    log:
        f"{R}/logs/compare_runs/{{group}}.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        runs=lambda w: [f"{RUN_SPACE}/{m}={R}/metrics/{w.group}/{m}" for m in compared_methods(w.group)]
        + [
            f"{s}/{m}={root.rstrip('/')}/metrics/{w.group}/{m}"
            for s, root in COMPARE_RUNS.items()
            for m in compared_methods(w.group)
        ],
        selections=lambda w: [f"{RUN_SPACE}={R}/selection/selection.json"]
        + [f"{s}={root.rstrip('/')}/selection/selection.json" for s, root in COMPARE_RUNS.items()],
        methods=lambda w: ",".join(compared_methods(w.group)),
        tasks=group_tasks,
        title=group_title,
    shell:
        "sglora compare-runs --runs {params.runs:q} --selections {params.selections:q} --group {wildcards.group:q} "
        "--methods {params.methods:q} --tasks {params.tasks:q} --title {params.title:q} --out {output:q} > {log:q} 2>&1"
