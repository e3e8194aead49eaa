# Task manifests: the embedded world, real datasets, and captioning.


rule world:
    """One domain of the embedded benchmark's synthetic world."""
    output:
        manifest=f"{R}/data/{{dataset}}/world/manifest.raw.parquet",
        captions=f"{R}/data/{{dataset}}/world/captions.parquet",
    log:
        f"{R}/logs/world/{{dataset}}.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        options=lambda w: as_json(config["datasets"][w.dataset].get("options")),
        out=lambda w, output: parent(output.manifest),
        seed=config["seed"],
    shell:
        "sglora world --out {params.out:q} --seed {params.seed:q} --options {params.options:q} > {log:q} 2>&1"


rule manifest:
    """A real dataset (MS-COCO, Flickr30K, OxfordPets, Flowers102, CIFAR-100) as a task manifest."""
    output:
        f"{R}/data/{{dataset}}/raw/manifest.raw.parquet",
    log:
        f"{R}/logs/manifest/{{dataset}}.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        kind=lambda w: config["datasets"][w.dataset]["kind"],
        root=lambda w: config["datasets"][w.dataset]["root"],
        options=lambda w: as_json(config["datasets"][w.dataset].get("options")),
        images=lambda w: f"{R}/data/{w.dataset}/images",
    shell:
        "sglora manifest --dataset {params.kind:q} --root {params.root:q} --out {output:q} "
        "--image-dir {params.images:q} --options {params.options:q} > {log:q} 2>&1"


rule caption:
    """Fine-grained captions: Qwen2-VL in context (Figure 6), or the world's own captions
(synthetic backend), or the dataset's captions as they are (none). Resumable shards."""
    input:
        manifest=raw_manifest,
        captioner=captioner_input,
    output:
        f"{R}/data/{{dataset}}/manifest.parquet",
    log:
        f"{R}/logs/caption/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/caption/{{dataset}}.tsv"
    conda:
        "../../envs/sglora.yaml"
    resources:
        gpu=lambda w: (
            config["datasets"][w.dataset].get("captioner", {}).get("gpu", 1) if caption_backend(w) == "qwen2vl" else 0
        ),
        mem_mb=lambda w: res("caption", "mem_mb", 4000) if caption_backend(w) == "qwen2vl" else 4000,
        runtime=lambda w: res("caption", "runtime", 60) if caption_backend(w) == "qwen2vl" else 60,
    params:
        backend=caption_backend,
        options=caption_options,
        shards=lambda w: caption_shards(w.dataset),
    shell:
        "sglora caption --manifest {input.manifest:q} --out {output:q} --backend {params.backend:q} "
        "--shard-dir {params.shards:q} --options {params.options:q} > {log:q} 2>&1"


rule pretrain_captioner:
    """The embedded worlds' captioner: a small Qwen2-VL trained on the seen tasks' training
images with the prompt of supplementary Figure 6 (instruction, demonstrations, query image);
saved like any Qwen2-VL checkpoint with its demonstrations (sglora/data/captioning/pretrain.py).
Used by the caption jobs of embedded worlds whose captioner is qwen2vl without a model."""
    input:
        manifest=raw_manifest(SimpleNamespace(dataset=EXPERTS["dataset"])),
        truth=world_truth(EXPERTS["dataset"]),
    output:
        directory(CAPTIONER),
    log:
        f"{R}/logs/pretrain_captioner.log",
    benchmark:
        f"{R}/benchmarks/pretrain_captioner.tsv"
    conda:
        "../../envs/sglora.yaml"
    threads: config.get("captioner", {}).get("threads") or THREADS
    resources:
        gpu=0,
        mem_mb=lambda w: res("pretrain_captioner", "mem_mb", 4000),
        runtime=lambda w: res("pretrain_captioner", "runtime", 30),
    params:
        world=lambda w, input: parent(input.truth),
        tasks=",".join(EXPERTS["tasks"]),
        pretrain=as_json(config.get("captioner", {}).get("pretrain")),
        seed=pretrain_seed(config),
    shell:
        "sglora pretrain-captioner --worlds {params.world:q} --tasks {params.tasks:q} --out {output:q} "
        "--seed {params.seed:q} --threads {threads} --pretrain {params.pretrain:q} > {log:q} 2>&1"


rule caption_quality:
    """How often the embedded worlds' captions state the truth about their images, per
attribute, beside chance and the worlds' own captions; and what the caption filter rejected."""
    input:
        manifests=[manifest(d) for d in EMBEDDED],
        truth=[world_truth(d) for d in EMBEDDED],
    output:
        md=f"{R}/captioning/quality.md",
        csv=f"{R}/captioning/quality.csv",
    log:
        f"{R}/logs/caption_quality.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        datasets=caption_quality_datasets,
    shell:
        "sglora caption-quality --datasets {params.datasets:q} --out {output.csv:q} "
        "--markdown {output.md:q} > {log:q} 2>&1"


rule check_tasks:
    """Fail early, naming the config key, if a configured task is not in its dataset. One
job per (dataset, task): a LoRA depends only on its own task's check, so editing a
group or the experts reruns nothing of the other tasks. High priority: the checks run
before the training jobs that become ready with them."""
    input:
        lambda w: manifest(w.dataset),
    output:
        check_file("{dataset}", "{task}"),
    log:
        f"{R}/logs/check_tasks/{{dataset}}/{{task}}.log",
    wildcard_constraints:
        task="[a-z0-9_]+",
    priority: 50
    conda:
        "../../envs/sglora.yaml"
    params:
        # functions of `input`: Snakemake does not rerun a job when these change. `wanted`
        # only names the config keys in an error; the check itself is the same for any key.
        pair=lambda w, input: f"{w.dataset}={input[0]}",
        wanted=lambda w, input: as_json(wanted_by(w.dataset, w.task)),
    shell:
        "sglora check-tasks --manifest {params.pair:q} --wanted {params.wanted:q} --out {output:q} > {log:q} 2>&1"
