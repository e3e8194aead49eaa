# Tables and figures, wrapped for `snakemake --report report.zip`.


def metric_dirs(wildcards=None):
    return [f"{R}/metrics/{g}/{m}" for g, spec in GROUPS.items() for m in spec["methods"]]


def table_files():
    return {
        f"{g}_{ext}": f"{R}/tables/{g}.{ext}" for g in GROUPS for ext in ("csv", "md", "tex", "per_task.md")
    }


rule tables:
    """Metric tables per group (CSV, Markdown, LaTeX with best bold / second underlined)."""
    input:
        metric_dirs(),
    output:
        done=touch(f"{R}/tables/done"),
        csv=[
            report(f"{R}/tables/{g}.csv", caption="../report/table.rst", category="Tables", labels={"group": g, "format": "csv"})
            for g in GROUPS
        ],
        md=[f"{R}/tables/{g}.md" for g in GROUPS],
        tex=[f"{R}/tables/{g}.tex" for g in GROUPS],
        per_task=[
            report(f"{R}/tables/{g}.per_task.md", caption="../report/per_task.rst", category="Tables", labels={"group": g, "format": "per task"})
            for g in GROUPS
        ],
    params:
        groups=as_json(GROUPS),
        metrics=f"{R}/metrics",
        out=f"{R}/tables",
    log:
        f"{R}/logs/tables.log",
    shell:
        "sglora tables --metrics {params.metrics} --groups {params.groups:q} --out {params.out} > {log} 2>&1"


rule figures:
    """t-SNE of expert LoRAs, t-SNE of samples for one unseen task, R@1 by method."""
    input:
        metric_dirs(),
        repository=f"{R}/repository",
        candidates=[f"{R}/candidates/{g}/{m}.safetensors" for g, spec in GROUPS.items() for m in spec["methods"]
                    if m in ("sglora", "oracle", "model_soups", "adaptersoup", "topk_weighted")],
    output:
        done=touch(f"{R}/figures/done"),
        figures=[
            report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in ("experts_tsne", "samples_tsne", "r1_bars")
        ],
        pdfs=[f"{R}/figures/{name}.pdf" for name in ("experts_tsne", "samples_tsne", "r1_bars")],
    params:
        groups=as_json(GROUPS),
        metrics=f"{R}/metrics",
        candidates=f"{R}/candidates",
        loras=f"{R}/loras",
        out=f"{R}/figures",
    log:
        f"{R}/logs/figures.log",
    shell:
        "sglora figures --repository {input.repository} --metrics {params.metrics} --candidates {params.candidates} "
        "--loras {params.loras} --groups {params.groups:q} --out {params.out} > {log} 2>&1"
