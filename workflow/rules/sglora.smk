# SG-LoRA itself: CVAEs on the repository (one per setting of the selection grid that needs
# its own training, each for every run), the selection on validation tasks, then samples.


rule train_cvae:
    """Train the conditional VAE (Eq. 8) on every snapshot of the repository, for one
variant (condition, k, tau, and augment, describe when the grid has them) and one run
(seed cvae.seed + run)."""
    input:
        f"{R}/repository",
    output:
        directory(f"{R}/cvae/{{variant}}/run{{run}}"),
    log:
        f"{R}/logs/train_cvae/{{variant}}/run{{run}}.log",
    benchmark:
        f"{R}/benchmarks/train_cvae/{{variant}}/run{{run}}.tsv"
    wildcard_constraints:
        run=r"\d+",
    # SG-LoRA's chain (CVAEs, selection, the controls) is the DAG's longest: before the Oracles
    priority: 5
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("train_cvae", mem_mb=8000, runtime=60),
    params:
        cvae=lambda w: as_json(cvae_training(config, CVAE_VARIANTS[w.variant], int(w.run))["cvae"]),
        prior=lambda w: as_json(cvae_training(config, CVAE_VARIANTS[w.variant], int(w.run))["prior"]),
    shell:
        "sglora train-cvae --repository {input:q} --cvae {params.cvae:q} --prior {params.prior:q} "
        "--out {output:q} --threads {threads} > {log:q} 2>&1"


rule select:
    """Choose one method's settings on the validation tasks (never on test tasks)."""
    input:
        manifest=lambda w: manifest(validation_of(w)["dataset"]),
        images=lambda w: image_cache(validation_of(w)["dataset"]),
        checks=lambda w: [check_file(validation_of(w)["dataset"], t) for t in validation_of(w)["tasks"]],
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        cvae=lambda w: cvae_dirs() if w.method == "sglora" else [],
        backbone=backbone_input(),
    output:
        f"{R}/selection/{{method}}.json",
    log:
        f"{R}/logs/select/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/select/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(SELECTABLE),
    priority: 5
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("select", mem_mb=4000, runtime=60),
    params:
        tasks=lambda w: ",".join(validation_of(w)["tasks"]),
        dataset=lambda w: validation_of(w)["dataset"],
        grid=lambda w: as_json({w.method: GRID[w.method]}),
        prior=as_json(config["prior"]),
        sampling=lambda w: method_sampling(w.method),
        lora=as_json(config["lora"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora select --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--dataset {params.dataset:q} --grid {params.grid:q} --repository {input.repository:q} "
        "--embeddings {input.embeddings:q} --cvae {input.cvae:q} --prior {params.prior:q} --sampling {params.sampling:q} "
        "--lora {params.lora:q} --image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"


# The same selection on a group's own validation tasks (groups.<g>.validation): selection/<g>/.
use rule select as select_group with:
    output:
        f"{R}/selection/{{vset}}/{{method}}.json",
    log:
        f"{R}/logs/select/{{vset}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/select/{{vset}}/{{method}}.tsv"
    wildcard_constraints:
        vset=OWN_VALIDATION,
        method="|".join(SELECTABLE),


rule selection_summary:
    """Every method's chosen settings and validation scores in one file (selection.json)."""
    input:
        [selection_file(m) for m in GRID],
    output:
        f"{R}/selection/selection.json",
    log:
        f"{R}/logs/selection_summary.log",
    conda:
        "../../envs/sglora.yaml"
    shell:
        "sglora selection-summary --selections {input:q} --out {output:q} > {log:q} 2>&1"


# A group's own selection.json, footnoted under its tables.
use rule selection_summary as selection_summary_group with:
    input:
        lambda w: [selection_file(m, w.vset) for m in GRID],
    output:
        f"{R}/selection/{{vset}}/selection.json",
    log:
        f"{R}/logs/selection_summary/{{vset}}.log",
    wildcard_constraints:
        vset=OWN_VALIDATION,


rule sample_sglora:
    """N LoRAs per task and run of a group from the CVAEs of the chosen variant (Eq. 9), as
candidates and as PEFT adapter folders (alpha of the experts used, run and seed in their metadata)."""
    input:
        cvae=cvae_dirs(),
        selection=lambda w: selection_file("sglora", w.group),
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
    output:
        candidates=f"{R}/candidates/{{group}}/sglora.safetensors",
        adapters=directory(f"{R}/samples/{{group}}"),
    log:
        f"{R}/logs/sample_sglora/{{group}}.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        method="sglora",
        tasks=group_tasks,
        dataset=group_dataset,
        seen=group_seen,
        settings=lambda w, input: f"--selection {shlex.quote(input.selection)}",
        adapters=lambda w, output: f"--adapters {shlex.quote(output.adapters)}",
        prior=as_json(config["prior"]),
        sampling=as_json(SAMPLING),
    shell:
        "sglora candidates --method {params.method} --tasks {params.tasks:q} --dataset {params.dataset:q} {params.seen} "
        "--repository {input.repository:q} --embeddings {input.embeddings:q} --cvae {input.cvae:q} {params.settings} "
        "--prior {params.prior:q} --sampling {params.sampling:q} {params.adapters} --out {output.candidates:q} "
        "> {log:q} 2>&1"


# The paper-faithful SG-LoRA beside the selected one: the same sampling, from the CVAEs of the
# paper's point (sglora/generator/grid.py paper_point: one condition per expert, no description in it,
# temperature 1, every sample a candidate), fixed, not selected; candidates only.
use rule sample_sglora as sample_sglora_paper with:
    input:
        cvae=cvae_dirs(),
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
    output:
        candidates=f"{R}/candidates/{{group}}/sglora_paper.safetensors",
    log:
        f"{R}/logs/sample_sglora/{{group}}.paper.log",
    params:
        method="sglora_paper",
        settings=f"--settings {shlex.quote(as_json(PAPER_POINT))}",
        adapters="",


rule export_cvae:
    """The chosen SG-LoRA (run 0 of the chosen variant) with its sampling temperature: what
`sglora generate --results` uses."""
    input:
        cvae=cvae_dirs(),
        selection=selection_file("sglora"),
    output:
        directory(f"{R}/cvae/selected"),
    log:
        f"{R}/logs/export_cvae.log",
    conda:
        "../../envs/sglora.yaml"
    shell:
        "sglora export-cvae --cvae {input.cvae:q} --selection {input.selection:q} --out {output:q} > {log:q} 2>&1"


rule ablation:
    """SG-LoRA's generator variants: every grid point's validation score, the chosen one and
the paper-faithful one marked (tables/ablation.{md,csv}, like supplementary Tables 11-12)."""
    input:
        selection_file("sglora"),
    output:
        md=report(f"{R}/tables/ablation.md", caption="../report/ablation.rst", category="Tables"),
        csv=f"{R}/tables/ablation.csv",
    log:
        f"{R}/logs/ablation.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        paper=as_json(PAPER_POINT),
    shell:
        "sglora ablation --selection {input:q} --paper {params.paper:q} --markdown {output.md:q} "
        "--csv {output.csv:q} > {log:q} 2>&1"


rule candidates_validation_oracle:
    """The validation tasks' Oracle: each one's own trained LoRA (final epoch)."""
    input:
        [lora_dir(VALIDATION["dataset"], t) for t in VALIDATION["tasks"]],
    output:
        f"{R}/premises/validation/oracle.safetensors",
    log:
        f"{R}/logs/premises/candidates_oracle.log",
    conda:
        "../../envs/sglora.yaml"
    shell:
        "sglora candidates --method oracle --loras {input:q} --out {output:q} > {log:q} 2>&1"


rule premises_descriptions:
    """The premise that needs only the backbone and the task descriptions (description-nearest
expert in the task's family, on the validation tasks and leave-one-out over the experts), before
any LoRA is trained: where a failed premise stops the run, every LoRA job waits for it."""
    input:
        f"{R}/tasks/embeddings.parquet",
    output:
        f"{R}/premises/descriptions.json",
    log:
        f"{R}/logs/premises_descriptions.log",
    benchmark:
        f"{R}/benchmarks/premises_descriptions.tsv"
    # gates the LoRAs
    priority: 30
    conda:
        "../../envs/sglora.yaml"
    params:
        experts_dataset=EXPERTS["dataset"],
        experts=",".join(EXPERTS["tasks"]),
        tasks=",".join(VALIDATION["tasks"]),
        embedded=EMBEDDED,
        prior=as_json(config["prior"]),
        premises=as_json(config.get("premises")),
    shell:
        "sglora premises-descriptions --embeddings {input:q} --experts-dataset {params.experts_dataset:q} "
        "--experts {params.experts:q} --tasks {params.tasks:q} --embedded {params.embedded:q} --prior {params.prior:q} "
        "--premises {params.premises:q} --out {output:q} > {log:q} 2>&1"


rule premises:
    """The benchmark's premises on the validation tasks: description-nearest expert in the
task's family, Oracle headroom, family transfer. On embedded worlds a failed premise
stops the run."""
    input:
        manifest=manifest(EXPERTS["dataset"]),
        images=image_cache(EXPERTS["dataset"]),
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        metrics=[validation_metrics(m) for m in ("zero_shot", "oracle")] if premise_headroom() else [],
        backbone=backbone_input(),
    output:
        json=f"{R}/premises/premises.json",
        md=report(f"{R}/premises/premises.md", caption="../report/premises.rst", category="Premises"),
    log:
        f"{R}/logs/premises.log",
    benchmark:
        f"{R}/benchmarks/premises.tsv"
    conda:
        "../../envs/sglora.yaml"
    resources:
        **heavy_resources("premises", mem_mb=4000, runtime=30),
    params:
        backbone=backbone_param,
        embedded=EMBEDDED,
        tasks=",".join(VALIDATION["tasks"]),
        transfer=premise_transfer_tasks(),
        headroom=(
            [f"validation={validation_metrics('zero_shot')},{validation_metrics('oracle')}"]
            if premise_headroom()
            else []
        ),
        prior=as_json(config["prior"]),
        premises=as_json(config.get("premises")),
        experts=EXPERTS["dataset"],
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora premises --backbone {params.backbone:q} --manifest {input.manifest:q} --experts-dataset {params.experts:q} "
        "--repository {input.repository:q} --embeddings {input.embeddings:q} --embedded {params.embedded:q} "
        "--tasks {params.tasks:q} --transfer {params.transfer:q} --headroom {params.headroom:q} --prior {params.prior:q} "
        "--premises {params.premises:q} --image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} --out {output.json:q} "
        "--markdown {output.md:q} > {log:q} 2>&1"
