# Description controls (sglora/analyses/description_controls.py): SG-LoRA and Top-K LoRA Weighted of every unseen
# group conditioned on another family's description, random world words, the bare template
# and a paraphrase, each against the task's own description (config `controls: true`).


rule controls:
    """One group's description controls: the control descriptions embedded by the backbone's
text encoder, each method's candidates under each control (its validation-chosen settings) and
their evaluation, in one job."""
    input:
        cvae=lambda w: cvae_dirs() if "sglora" in controls_methods(w.group) else [],
        selection=lambda w: [s for m in controls_methods(w.group) for s in selection_input(m, w.group)],
        repository=f"{R}/repository",
        embeddings=f"{R}/tasks/embeddings.parquet",
        manifest=group_manifest,
        checks=group_checks,
        backbone=backbone_input(),
        images=group_images,
    output:
        directory(f"{R}/controls/{{group}}"),
    log:
        f"{R}/logs/controls/{{group}}.log",
    benchmark:
        f"{R}/benchmarks/controls/{{group}}.tsv"
    priority: 5
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        **heavy_resources("evaluate", mem_mb=4000, runtime=60),
    params:
        tasks=group_tasks,
        dataset=group_dataset,
        methods=lambda w: ",".join(controls_methods(w.group)),
        spec=lambda w: controls_spec(w.group),
        world=lambda w: f"--world {shlex.quote(controls_world(w.group))}" if controls_world(w.group) else "",
        embedded=EMBEDDED,
        template=config.get("description", {}).get("template", ""),
        prior=as_json(config["prior"]),
        sampling=as_json(SAMPLING),
        lora=as_json(config["lora"]),
        backbone=backbone_param,
        device=config["device"],
        gallery=GALLERY,
    shell:
        "sglora controls --backbone {params.backbone:q} --manifest {input.manifest:q} --tasks {params.tasks:q} "
        "--group {wildcards.group:q} --methods {params.methods:q} --dataset {params.dataset:q} "
        "--repository {input.repository:q} --embeddings {input.embeddings:q} --cvae {input.cvae:q} "
        "--selection {input.selection:q} --spec {params.spec:q} --embedded {params.embedded:q} {params.world} "
        "--template {params.template:q} --prior {params.prior:q} --sampling {params.sampling:q} --lora {params.lora:q} "
        "--image-cache {input.images:q} --gallery {params.gallery} --device {params.device:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"


rule controls_table:
    """A group's controls table: each control's score and its paired interval minus the task's
own description (the group's ordinary metrics)."""
    input:
        own=lambda w: [f"{R}/metrics/{w.group}/{m}" for m in controls_methods(w.group)],
        controls=f"{R}/controls/{{group}}",
    output:
        md=report(
            f"{R}/tables/{{group}}.controls.md",
            caption="../report/controls.rst",
            category="Tables",
            labels={"group": "{group}", "format": "controls"},
        ),
        csv=f"{R}/tables/{{group}}.controls.csv",
    log:
        f"{R}/logs/controls/{{group}}.table.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        own=lambda w, input: [f"{m}={p}" for m, p in zip(controls_methods(w.group), input.own)],
        tasks=group_tasks,
        spec=lambda w: controls_spec(w.group),
        embedded=EMBEDDED,
        unit=BOOTSTRAP_UNIT,
    shell:
        "sglora controls-table --own {params.own:q} --controls {input.controls:q} --group {wildcards.group:q} "
        "--tasks {params.tasks:q} --spec {params.spec:q} --embedded {params.embedded:q} "
        "--bootstrap-unit {params.unit:q} --markdown {output.md:q} --csv {output.csv:q} > {log:q} 2>&1"
