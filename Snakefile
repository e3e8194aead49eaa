# SG-LoRA: semantic-guided LoRA parameter generation, as one Snakemake DAG.
#
#   snakemake --cores all                          # the embedded default (config.yaml)
#   snakemake --cores all --configfile config/coco_in_dataset.yaml
#   snakemake --profile workflow/profiles/slurm --configfile ...
#
# Rules are thin: each calls one `sglora <step>` command, i.e. one function of sglora/steps/
# (in the module named after its rules file).

# config.yaml is the embedded default. A --configfile (config/tiny.yaml, a paper preset)
# replaces it instead of being merged into it: a merge would add the default's datasets and
# groups to the preset's. --config key=value applies on top of either.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/loras_common.smk"
include: "workflow/rules/loras.smk"
include: "workflow/rules/sglora.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/controls_common.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/generators_common.smk"
include: "workflow/rules/generators.smk"
include: "workflow/rules/controls.smk"


# Training replicates (config replicates: R > 1, sglora/evaluation/replicates.py): this run is
# replicate 0; replicates 1 .. R-1 are this workflow again, as modules, each in
# <results>/replicates/<k> with every training seed moved and its rules named replicate_<k>_*,
# but `world`: they read replicate 0's world. The rule tables_pooled pools their tables.
for _k in range(1, REPLICATES):
    _module, _prefix = f"replicate_{_k}", f"replicate_{_k}_"
    workflow.module(_module, snakefile="Snakefile", config=replicate_config(config, _k))

    use rule * from _module exclude world as _prefix*


# Light rules run where snakemake runs (on a cluster: the submit host), never as cluster jobs.
localrules:
    world,
    manifest,
    check_tasks,
    assemble,
    candidates_oracle,
    candidates_validation_oracle,
    candidates_multitask,
    candidates_merging,
    candidates_pdiff,
    sample_sglora,
    sample_sglora_paper,
    export_cvae,
    selection_summary,
    selection_summary_group,
    tables,
    figures,
    candidates_generator,
    compare_runs,
    ablation,
    results_page,
    controls_table,
    caption_quality,
    all,


# A module's localrules directive names its rules without their prefix: the replicates' light
# rules are declared local here (else a cluster run would submit each as a job).
for _k in range(1, REPLICATES):
    _prefix = f"replicate_{_k}_"
    workflow.localrules(
        *(
            r.name
            for r in workflow.rules
            if r.name.startswith(_prefix) and r.name.removeprefix(_prefix) in workflow._localrules
        )
    )


rule all:
    default_target: True
    input:
        all_outputs(),
        [f for k in range(1, REPLICATES) for f in getattr(rules, f"replicate_{k}_all").input],
        analysis_outputs(),
        controls_outputs(),
