# The repository-size study (what the generator adds as experts grow): the whole pipeline once per
# number of experts per family, then SG-LoRA minus Top-K LoRA Weighted and minus the
# Oracle against repository size, with paired 95% intervals.
#
#   snakemake -s workflow/studies/repository_size.smk --cores all
#   snakemake -s workflow/studies/repository_size.smk --cores all --configfile my_study.yaml
#
# Each size is a complete run of the main Snakefile in <results>/experts-<N> (its own
# cached DAG: rerunning the study after changing one size's settings reruns only what
# changed there). The study's own outputs: <results>/repository_size.{md,json} and
# <results>/figures/repository_size.{png,pdf}. Keys: sglora/analyses/studies.py StudySpec.
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from sglora.analyses.studies import StudySpec

if not workflow.overwrite_configfiles:

    configfile: "config/studies/repository_size.yaml"


validate(config, "../schemas/repository_size.schema.yaml")
STUDY = StudySpec.from_dict(config)
R = STUDY.results.rstrip("/")
MAIN = str(Path(workflow.basedir).parents[1] / "Snakefile")
BASE = yaml.safe_load(open(STUDY.base))
if STUDY.group not in BASE.get("groups", {}):
    raise ValueError(f"{STUDY.base}: the study's group {STUDY.group!r} is not a group of the base config")
TASKS = BASE["groups"][STUDY.group]["tasks"]


def metrics_files(w):
    """The size's metric files the study compares (the main workflow's layout)."""
    root = f"{R}/experts-{w.n}/metrics/{STUDY.group}"
    return " ".join(f"{m}/{t}={root}/{m}/{t}.json" for m in ["sglora", *STUDY.methods] for t in TASKS)


rule study_all:
    default_target: True
    input:
        f"{R}/repository_size.md",
        f"{R}/figures/repository_size.png",


rule size_config:
    """One size's pipeline config: the base with the first N experts of every family."""
    input:
        base=STUDY.base,
    output:
        f"{R}/experts-{{n}}/config.yaml",
    log:
        f"{R}/logs/size_config-{{n}}.log",
    params:
        results=lambda w: f"{R}/experts-{w.n}",
    shell:
        "sglora study-config --base {input.base:q} --experts-per-family {wildcards.n} --results {params.results:q} "
        "--out {output:q} > {log:q} 2>&1"


FIRST = STUDY.sizes[0]  # the first size builds the world and the backbone every size shares


def shared_from(w):
    """Every size but the first starts from the first size's world and backbone (the same
    world options and seed give the same bytes, so pretraining once is enough)."""
    return [] if int(w.n) == FIRST else [f"{R}/sizes/experts-{FIRST}.json"]


rule size_run:
    """The whole pipeline on one size (a nested Snakemake run with its own cached DAG),
    then its compared metrics collected into one file. A later size first copies the first
    size's data/ and backbone/ (mtimes kept, so its run sees them up to date) unless it
    has its own."""
    input:
        config=f"{R}/experts-{{n}}/config.yaml",
        shared=shared_from,
    output:
        f"{R}/sizes/experts-{{n}}.json",
    log:
        f"{R}/logs/size_run-{{n}}.log",
    benchmark:
        f"{R}/benchmarks/size_run-{{n}}.tsv"
    threads: workflow.cores
    params:
        main=MAIN,
        metrics=metrics_files,
        results=lambda w: f"{R}/experts-{w.n}",
        first=f"{R}/experts-{FIRST}",
        first_n=FIRST,
    shell:
        "if [ {wildcards.n} != {params.first_n} ] && [ ! -e {params.results:q}/backbone ]; then "
        "cp -a {params.first:q}/data {params.first:q}/backbone {params.results:q}/; fi && "
        "snakemake -s {params.main:q} --configfile {input.config:q} --cores {threads} --nolock > {log:q} 2>&1 && "
        "sglora study-collect --config {input.config:q} --experts-per-family {wildcards.n} "
        "--metrics {params.metrics} --out {output:q} >> {log:q} 2>&1"


rule study_summary:
    """SG-LoRA minus each compared method against experts per family: table and figure."""
    input:
        expand(f"{R}/sizes/experts-{{n}}.json", n=STUDY.sizes),
    output:
        md=f"{R}/repository_size.md",
        json=f"{R}/repository_size.json",
        png=f"{R}/figures/repository_size.png",
        pdf=f"{R}/figures/repository_size.pdf",
    log:
        f"{R}/logs/study_summary.log",
    params:
        against=" ".join(STUDY.methods),
    shell:
        "sglora study-summary --sizes {input:q} --against {params.against} --markdown {output.md:q} "
        "--out {output.json:q} --figures $(dirname {output.png:q}) > {log:q} 2>&1"
