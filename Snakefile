# SG-LoRA: semantic-guided LoRA parameter generation, as one Snakemake DAG.
#
#   snakemake --cores all                          # the embedded default (config.yaml)
#   snakemake --cores all --configfile config/coco_in_dataset.yaml
#   snakemake --profile workflow/profiles/slurm --configfile ...
#
# Rules are thin: each calls one `sglora <step>` command (sglora/cli.py).

configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/loras.smk"
include: "workflow/rules/sglora.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
