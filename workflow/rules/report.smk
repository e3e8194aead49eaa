# Tables and figures, wrapped for `snakemake --report report.zip`.


rule tables:
    """Metric tables per group (CSV, Markdown, LaTeX) with 95% bootstrap intervals; SG-LoRA minus
each method with paired intervals; SG-LoRA minus the nearest expert on each task; the test-selected best-of-N rows in a diagnostic table;
every table footnotes the settings chosen on the validation tasks."""
    input:
        metrics=list(metric_dirs().values()),
        selection=f"{R}/selection/selection.json",
        group_selections=[f"{R}/selection/{g}/selection.json" for g in own_validation_groups()],
    output:
        csv=[
            report(
                f"{R}/tables/{g}.csv",
                caption="../report/table.rst",
                category="Tables",
                labels={"group": g, "format": "csv"},
            )
            for g in GROUPS
        ],
        md=[f"{R}/tables/{g}.md" for g in GROUPS],
        tex=[f"{R}/tables/{g}.tex" for g in GROUPS],
        per_task=[
            report(
                f"{R}/tables/{g}.per_task.md",
                caption="../report/per_task.rst",
                category="Tables",
                labels={"group": g, "format": "per task"},
            )
            for g in GROUPS
        ],
        paired=[
            report(
                f"{R}/tables/{g}.paired.md",
                caption="../report/paired.rst",
                category="Tables",
                labels={"group": g, "format": "paired"},
            )
            for g in paired_groups()
        ],
        paired_csv=[f"{R}/tables/{g}.paired.csv" for g in paired_groups()],
        verdicts=[
            report(
                f"{R}/tables/{g}.verdicts.md",
                caption="../report/verdicts.rst",
                category="Tables",
                labels={"group": g, "format": "verdicts"},
            )
            for g in verdict_groups()
        ],
        verdicts_csv=[f"{R}/tables/{g}.verdicts.csv" for g in verdict_groups()],
        diagnostic=[
            report(
                f"{R}/tables/{g}.diagnostic.md",
                caption="../report/diagnostic.rst",
                category="Tables",
                labels={"group": g, "format": "diagnostic"},
            )
            for g in GROUPS
        ],
    log:
        f"{R}/logs/tables.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        groups=as_json(GROUPS),
        metrics=keyed(metric_dirs()),
        group_selections=keyed({g: f"{R}/selection/{g}/selection.json" for g in own_validation_groups()}),
        out=lambda w, output: parent(output.csv[0]),
        paper=as_json(PAPER_POINT),
        unit=BOOTSTRAP_UNIT,
        embedded=EMBEDDED,
        target=optional_flag("--target-half-width", config["evaluation"].get("target_half_width")),
    shell:
        "sglora tables --metrics {params.metrics:q} --groups {params.groups:q} --selection {input.selection:q} "
        "--group-selections {params.group_selections:q} "
        "--paper {params.paper:q} --bootstrap-unit {params.unit:q} --embedded {params.embedded:q} {params.target} "
        "--out {params.out:q} > {log:q} 2>&1"


if REPLICATES > 1:

    # a light rule, like tables (the Snakefile's localrules); named only where it exists
    localrules:
        tables_pooled,

    rule tables_pooled:
        """The group and paired tables pooled over the training replicates (replicates drawn first
        by the bootstrap, then families, tasks, queries and runs), each replicate's verdict beside each
        paired difference; footnotes: the settings replicate 0 chose on its validation tasks."""
        input:
            metrics=list(metric_dirs().values()) + list(pooled_metric_dirs().values()),
            selection=f"{R}/selection/selection.json",
        output:
            md=[f"{R}/tables/pooled/{g}.md" for g in GROUPS],
            csv=[f"{R}/tables/pooled/{g}.csv" for g in GROUPS],
            tex=[f"{R}/tables/pooled/{g}.tex" for g in GROUPS],
            paired=[f"{R}/tables/pooled/{g}.paired.md" for g in paired_groups()],
            paired_csv=[f"{R}/tables/pooled/{g}.paired.csv" for g in paired_groups()],
        log:
            f"{R}/logs/tables_pooled.log",
        conda:
            "../../envs/sglora.yaml"
        params:
            groups=as_json(GROUPS),
            metrics=keyed(metric_dirs()),
            pool=keyed(pooled_metric_dirs()),
            out=lambda w, output: parent(output.md[0]),
            paper=as_json(PAPER_POINT),
            unit=BOOTSTRAP_UNIT,
            embedded=EMBEDDED,
            target=optional_flag("--target-half-width", config["evaluation"].get("target_half_width")),
        shell:
            "sglora tables --metrics {params.metrics:q} --pool {params.pool:q} --groups {params.groups:q} "
            "--selection {input.selection:q} --paper {params.paper:q} --bootstrap-unit {params.unit:q} "
            "--embedded {params.embedded:q} {params.target} --out {params.out:q} > {log:q} 2>&1"


rule figures:
    """t-SNE of expert LoRAs, t-SNE of samples for one unseen task, R@1 by method."""
    input:
        metrics=list(metric_dirs().values()),
        loras=list(figure_loras().values()),
        repository=f"{R}/repository",
        candidates=list(figure_candidates().values()),
    output:
        figures=[
            report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures") for name in FIGURES
        ],
        pdfs=[f"{R}/figures/{name}.pdf" for name in FIGURES],
    log:
        f"{R}/logs/figures.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        groups=as_json(GROUPS),
        metrics=keyed(metric_dirs()),
        candidates=keyed(figure_candidates()),
        loras=keyed(figure_loras()),
        samples_group=samples_group(),
        out=lambda w, output: parent(output.figures[0]),
    shell:
        "sglora figures --repository {input.repository:q} --metrics {params.metrics:q} --candidates {params.candidates:q} "
        "--loras {params.loras:q} --groups {params.groups:q} --samples-group {params.samples_group:q} "
        "--out {params.out:q} > {log:q} 2>&1"


rule results_page:
    """The run's results page, assembled from its own files (premises, every group's table and
    paired table, time per rule from the benchmark files, what produced the numbers): the
    default config publishes it as docs/results.md, so the docs never disagree with the run."""
    input:
        tables=[f"{R}/tables/{g}.md" for g in GROUPS],
        paired=[f"{R}/tables/{g}.paired.md" for g in paired_groups()],
        controls=[f"{R}/tables/{g}.controls.md" for g in controls_groups()],
        premises=f"{R}/premises/premises.md",
        figures=[f"{R}/figures/{name}.png" for name in FIGURES],
        captions=[f"{R}/captioning/quality.md"] if EMBEDDED else [],
        pooled=[f"{R}/tables/pooled/{g}.md" for g in GROUPS] if REPLICATES > 1 else [],
        # every other replicate done, so its time per rule is complete (the modules are added
        # after this file is read: a function, evaluated when the DAG is built)
        replicates=lambda w: [f for k in range(1, REPLICATES) for f in getattr(rules, f"replicate_{k}_all").input],
    output:
        RESULTS_PAGE,
    log:
        f"{R}/logs/results_page.log",
    conda:
        "../../envs/sglora.yaml"
    params:
        title=config.get("results_page", {}).get("title", "Results"),
        groups=",".join(GROUPS),
        paired=",".join(paired_groups()),
        controls=",".join(controls_groups()),
        tables=lambda w, input: parent(input.tables[0]),
        benchmarks=f"{R}/benchmarks",
        logs=f"{R}/logs",
        source=" ".join(os.path.relpath(f) for f in workflow.overwrite_configfiles) or "config.yaml",
        threads=THREADS,
        captions=lambda w, input: f"--captions {shlex.quote(input.captions[0])}" if input.captions else "",
        pooled=lambda w, input: f"--pooled {shlex.quote(parent(input.pooled[0]))}" if input.pooled else "",
        replicates=REPLICATES,
        replicate_benchmarks=" ".join(
            f"--replicate-benchmarks {shlex.quote(replicate_results(R, k))}/benchmarks" for k in range(1, REPLICATES)
        ),
    shell:
        "sglora results-page --out {output:q} --title {params.title:q} --tables {params.tables:q} "
        "--groups {params.groups:q} --paired {params.paired:q} --controls {params.controls:q} --premises {input.premises:q} "
        "--benchmarks {params.benchmarks:q} --logs {params.logs:q} --threads {params.threads} --source {params.source:q} {params.captions} {params.pooled} "
        "--replicates {params.replicates} {params.replicate_benchmarks} "
        "> {log:q} 2>&1"
