# The backbone: a pretrained CLIP given by id/path, or the embedded benchmark's CLIP.


rule pretrain_backbone:
    """Pretrain the small CLIP of the embedded benchmark on coarse captions of all classes
of every embedded dataset (it knows class names, not a task's fine details); never on a
hybrid of the between group."""
    input:
        [world_truth(d) for d in EMBEDDED],
    output:
        directory(f"{R}/backbone"),
    log:
        f"{R}/logs/pretrain_backbone.log",
    benchmark:
        f"{R}/benchmarks/pretrain_backbone.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: config.get("backbone", {}).get("threads") or max(THREADS, 2)
    resources:
        gpu=0,
        mem_mb=lambda w: res("pretrain_backbone", "mem_mb", 4000),
        runtime=lambda w: res("pretrain_backbone", "runtime", 30),
    params:
        worlds=[parent(world_truth(d)) for d in EMBEDDED],
        pretrain=as_json(config.get("backbone", {}).get("pretrain")),
        seed=pretrain_seed(config),
    shell:
        "sglora pretrain --worlds {params.worlds:q} --out {output:q} --seed {params.seed:q} "
        "--threads {threads} --pretrain {params.pretrain:q} > {log:q} 2>&1"


rule embed:
    """Task embeddings d = f(T) (text) and mean image embeddings (visual) of every task."""
    input:
        manifests=[manifest(d) for d in config["datasets"]],
        backbone=backbone_input(),
        images=[image_cache(d) for d in config["datasets"]],
    output:
        f"{R}/tasks/embeddings.parquet",
    log:
        f"{R}/logs/embed.log",
    benchmark:
        f"{R}/benchmarks/embed.tsv"
    # gates assemble, and with it the CVAEs, selection, sampling and the controls
    priority: 30
    conda:
        "../../envs/sglora.yaml"
    resources:
        # the backbone's encoders in inference, as in an evaluation: its resources
        **heavy_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        pairs=[f"{d}={manifest(d)}" for d in config["datasets"]],
        caches=[f"{d}={image_cache(d)}" for d in config["datasets"]],
        template=config.get("description", {}).get("template", ""),
        backbone=backbone_param,
        device=config["device"],
    shell:
        "sglora embed --backbone {params.backbone:q} --manifest {params.pairs:q} "
        "--template {params.template:q} --image-cache {params.caches:q} --device {params.device:q} --out {output:q} > {log:q} 2>&1"
