# The image cache: each dataset's images decoded, resized and cropped once, as uint8 at
# the backbone's input size. Every step that reads images streams batches from it
# (sglora/data/images.py), so no step holds a task's images as float32 and no JPEG is decoded twice.


rule image_cache:
    """Decode, resize and crop every image of a dataset once with the backbone's image
processor (the cache is keyed by its settings: another backbone gets its own)."""
    input:
        manifest=raw_manifest,
        backbone=backbone_input(),
    output:
        directory(f"{R}/data/{{dataset}}/image_cache"),
    log:
        f"{R}/logs/image_cache/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/image_cache/{{dataset}}.tsv"
    # every training job waits for a cache, and embed (which gates the repository) for all of them
    priority: 40
    conda:
        "../../envs/sglora.yaml"
    threads: THREADS
    resources:
        mem_mb=lambda w: res("image_cache", "mem_mb", 4000),
        runtime=lambda w: res("image_cache", "runtime", 60),
    params:
        backbone=backbone_param,
    shell:
        "sglora image-cache --backbone {params.backbone:q} --manifest {input.manifest:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"
