# Config validation and helpers shared by the rules.
import json
import os
import shlex
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir)))  # the sglora package beside the Snakefile, installed or not
from sglora.generator.grid import cvae_training, cvae_variants, paper_point, sampling_section, selection_grid
from sglora.analyses.premises import PremiseSpec
from sglora.evaluation.replicates import (
    check_replicate,
    pretrain_seed,
    replicate_config,
    replicate_index,
    replicate_results,
    run_results,
)
from sglora.methods import METHODS, methods_where

# beside these rules, wherever the workflow is used from (also as a module of another project)
SCHEMA = Path(workflow.current_basedir).parent / "schemas" / "config.schema.yaml"


def schema_errors(cfg, schema_path=SCHEMA):
    """Every way ``cfg`` breaks the config schema, one line each, the key first
    (``config training.lr: -1 is less than ...``; an unknown key: the keys its section knows).
    Snakemake's own report of a failed validation prints the whole config and schema."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    lines = []
    for err in sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path]
    ):
        where = ".".join(str(p) for p in err.absolute_path)
        prefix, section = (f"{where}.", f"in {where}") if where else ("", "at the top level")
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = sorted(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                lines.append(f"config {prefix}{key}: unknown key {section}; known keys: {', '.join(known)}")
        elif err.validator == "required" and isinstance(err.instance, dict):
            for key in [k for k in err.validator_value if k not in err.instance]:
                lines.append(f"config {prefix}{key}: required key missing {section}")
        else:
            message = " ".join(err.message.split())
            lines.append(
                f"config {where or '(top level)'}: {message[:300] + ' ...' if len(message) > 300 else message}"
            )
    return list(dict.fromkeys(lines))  # a key missing from a section is reported by each of its required errors


_errors = schema_errors(config)  # one line per error, before Snakemake's validation (which adds the defaults)
if _errors:
    raise ValueError("\n".join(_errors) + f"\n(schema: {os.path.relpath(SCHEMA)})")
validate(config, str(SCHEMA))  # sets the schema's defaults


def _check_config():
    """Cross-field checks the JSON schema cannot express; fail before any job runs."""
    names = set(config["datasets"])
    if config["experts"]["dataset"] not in names:
        raise ValueError(
            f"config: experts.dataset {config['experts']['dataset']!r} is not a key of datasets ({sorted(names)})"
        )
    for g, spec in config["groups"].items():
        if spec["dataset"] not in names:
            raise ValueError(
                f"config: groups.{g}.dataset {spec['dataset']!r} is not a key of datasets ({sorted(names)})"
            )
        if len(set(spec["tasks"])) != len(spec["tasks"]):
            raise ValueError(f"config: groups.{g}.tasks lists a task twice")
        unknown = [m for m in spec["methods"] if m not in METHODS]
        if unknown:
            raise ValueError(
                f"config: groups.{g}.methods: {unknown} are not methods of sglora/methods.py ({list(METHODS)})"
            )
        seen_only = set(methods_where(seen_only=True)) & set(spec["methods"])
        not_experts = [t for t in spec["tasks"] if t not in config["experts"]["tasks"]]
        if seen_only and (not_experts or spec["dataset"] != config["experts"]["dataset"]):
            raise ValueError(
                f"config: groups.{g} uses {sorted(seen_only)}, seen-task baselines, but {not_experts or spec['dataset']} "
                "is not among the experts (experts.tasks / experts.dataset)"
            )
    averaged = config.get("sampling", {}).get("average") or True in config.get("selection", {}).get("sglora", {}).get(
        "average", []
    )
    if (
        averaged
        and sampling_section(config)["runs"] < 2
        and any("noisy_expert" in s["methods"] for s in config["groups"].values())
    ):
        raise ValueError(
            "config: noisy_expert matches the spread of SG-LoRA's candidates, but with sampling.average (set, or in "
            "selection.sglora.average) and sampling.runs < 2 a task has one candidate and no spread: set sampling.runs >= 2"
        )
    for name, d in config["datasets"].items():
        if d["kind"] != "embedded" and "root" not in d:
            raise ValueError(f"config: datasets.{name}.root is required for kind {d['kind']!r}")
        if d["kind"] == "embedded" and d.get("options", {}).get("classes"):
            from sglora.io import SGLoraError
            from sglora.data.world import check_classes

            size = {k: d["options"][k] for k in ("families", "members") if k in d["options"]}
            try:
                check_classes(d["options"]["classes"], **size)  # a hybrid's two families, too
            except SGLoraError as err:
                raise ValueError(f"config: datasets.{name}.options.classes: {err}") from None
    if len(set(config["experts"]["tasks"])) != len(config["experts"]["tasks"]):
        raise ValueError("config: experts.tasks lists a task twice")
    val = config["validation"]
    if val["dataset"] not in names:
        raise ValueError(f"config: validation.dataset {val['dataset']!r} is not a key of datasets ({sorted(names)})")
    if len(set(val["tasks"])) != len(val["tasks"]):
        raise ValueError("config: validation.tasks lists a task twice")
    experts = {(config["experts"]["dataset"], t) for t in config["experts"]["tasks"]}
    for g, spec in config["groups"].items():
        shared = [t for t in spec["tasks"] if (spec["dataset"], t) in experts]
        if spec["unseen"] and shared:
            raise ValueError(
                f"config: groups.{g}.tasks: {shared} of dataset {spec['dataset']!r} are experts (experts.tasks), but "
                f"groups.{g} is an unseen group; its tasks must be disjoint from the experts (or set groups.{g}.unseen: false)"
            )
    taken = {(config["experts"]["dataset"], t): "experts.tasks" for t in config["experts"]["tasks"]}
    for g, spec in config["groups"].items():
        taken.update({(spec["dataset"], t): f"groups.{g}.tasks" for t in spec["tasks"]})
    clash = [f"{t} (also in {taken[(val['dataset'], t)]})" for t in val["tasks"] if (val["dataset"], t) in taken]
    if clash:
        raise ValueError(
            "config: validation.tasks must be disjoint from the experts and every evaluation group: " + ", ".join(clash)
        )
    taken.update({(val["dataset"], t): "validation.tasks" for t in val["tasks"]})
    for g, spec in config["groups"].items():  # a group's own validation tasks (groups.<g>.validation)
        own = spec.get("validation")
        if not own:
            continue
        key = f"groups.{g}.validation"
        if own["dataset"] not in names:
            raise ValueError(f"config: {key}.dataset {own['dataset']!r} is not a key of datasets ({sorted(names)})")
        if len(set(own["tasks"])) != len(own["tasks"]):
            raise ValueError(f"config: {key}.tasks lists a task twice")
        clash = [f"{t} (also in {taken[(own['dataset'], t)]})" for t in own["tasks"] if (own["dataset"], t) in taken]
        if clash:
            raise ValueError(
                f"config: {key}.tasks must be disjoint from the experts, every evaluation group and every "
                "validation set: " + ", ".join(clash)
            )
        taken.update({(own["dataset"], t): f"{key}.tasks" for t in own["tasks"]})


_check_config()
check_replicate(config)

R = config["results"].rstrip("/")
# where the embedded worlds are: this run's folder, or for a training replicate replicate 0's
# (one world, generated once; the Snakefile leaves the replicates' `world` rules out)
WORLD_R = run_results(config)
# training replicates of this run (config replicates; the Snakefile adds replicates 1 .. R-1 as
# modules of itself, each with replicate: k, which adds none)
REPLICATES = int(config.get("replicates", 1)) if replicate_index(config) == 0 else 1
THREADS = config["threads"]
PRETRAINED = config.get("backbone", {}).get("pretrained")
BACKBONE = PRETRAINED or f"{R}/backbone"
CAPTIONER = f"{R}/captioner"  # the embedded worlds' Qwen2-VL captioner (rule pretrain_captioner)
EXPERTS = config["experts"]
GROUPS = config["groups"]
EMBEDDED = [n for n, d in config["datasets"].items() if d["kind"] == "embedded"]
VALIDATION = config["validation"]
GALLERY = config["evaluation"]["gallery"]
BOOTSTRAP_UNIT = config["evaluation"]["bootstrap_unit"]
SAMPLING = sampling_section(config)
# SG-LoRA's grid (completed with the config's settings), its paper-faithful point, and the
# CVAE trainings they need, by folder name (sglora/generator/grid.py)
GRID = selection_grid(config)
PAPER_POINT = paper_point(config)
CVAE_VARIANTS = cvae_variants(config)


SELECTABLE = tuple(m for m, v in METHODS.items() if v.settings)


def method_sampling(method):
    """The sampling settings ``method`` reads (config ``sampling``): a generative method's
    (SG-LoRA samples its candidates), none for the others, so that editing them reruns
    nothing of the merging baselines."""
    return as_json(SAMPLING if METHODS[method].kind == "generative" else {})


def own_validation_groups():
    """Groups whose settings their own validation tasks choose (groups.<g>.validation)."""
    return [g for g, spec in GROUPS.items() if spec.get("validation")]


#: the groups with their own validation tasks, as a wildcard constraint (matches nothing when none has)
OWN_VALIDATION = "|".join(own_validation_groups()) or "(?!)"


def selection_file(method, group=None):
    """A method's settings for ``group``: chosen on the group's own validation tasks
    (selection/<group>/) where it has them, else on the config's (selection/)."""
    sub = f"{group}/" if group in own_validation_groups() else ""
    return f"{R}/selection/{sub}{method}.json"


def selection_input(method, group=None):
    """A method's selection file as a rule input ([] for a method without a grid)."""
    return [selection_file(method, group)] if method in GRID else []


def validation_of(wildcards):
    """The validation tasks of a selection job: those of group ``vset`` (rule select_group), else the config's."""
    return GROUPS[wildcards.vset]["validation"] if wildcards.get("vset") else VALIDATION


def cvae_dirs(wildcards=None):
    return [f"{R}/cvae/{name}/run{r}" for name in CVAE_VARIANTS for r in range(SAMPLING["runs"])]


# --- devices: one GPU per job on a workstation, requests checked against this machine ---

# Local GPU jobs take a free GPU from lock files here (sglora/devices.py); a job on a
# cluster node (SLURM) gets its devices from the scheduler and never looks at them.
# (set here, not asserted with `envvars:`: the workflow provides it, the user does not)
if workflow.is_main_process:
    os.environ.update(SGLORA_GPU_SLOTS=f"{R}/gpu_slots/{socket.gethostname()}")
else:
    os.environ.pop("SGLORA_GPU_SLOTS", None)


def impossible_requests(gpus, memory_mb, gpu_limit=None):
    """What this config asks of one machine that it does not have: a rule's `gpu` above
    the GPUs present (when there are any), its `mem_mb` above the machine's memory, and a
    `--resources gpu` limit above the GPUs present (CPU jobs would queue for a GPU)."""
    asked = [(f"resources.{r}", spec) for r, spec in config.get("resources", {}).items()]
    asked += [
        (f"datasets.{d}.captioner", spec.get("captioner", {}))
        for d, spec in config["datasets"].items()
        if spec.get("captioner", {}).get("backend") == "qwen2vl"
    ]
    problems = []
    for key, spec in asked:
        if gpus and int(spec.get("gpu", 0)) > gpus:
            problems.append(f"{key}.gpu={spec['gpu']}, but this machine has {gpus} GPU(s)")
        if int(spec.get("mem_mb", 0)) > memory_mb:
            problems.append(f"{key}.mem_mb={spec['mem_mb']}, but this machine has {memory_mb} MB")
    if gpu_limit is not None and gpu_limit > gpus:
        problems.append(
            f"--resources gpu={gpu_limit}, but this machine has {gpus} GPU(s): GPU rules would "
            f"queue for a GPU that is not there (give gpu={gpus}, or use the default profile, "
            "whose limit is the number of GPUs present)"
        )
    return problems


onstart:
    # a real run (never a dry run), before the first job: on a workstation, refuse what cannot run here
    try:
        from sglora.devices import memory_mb, visible_gpus
    except ImportError:  # snakemake without the sglora package beside it (per-rule conda envs)
        print("note: sglora is not importable here; requests are not checked against this machine", file=sys.stderr)
    else:
        limit = workflow.global_resources["gpu"].value if "gpu" in workflow.global_resources else None
        problems = impossible_requests(len(visible_gpus()), memory_mb(), limit) if workflow.local_exec else []
        if problems:
            raise ValueError("config asks for more than this machine has:\n  " + "\n  ".join(problems))
        start_warm_server()


onsuccess:
    stop_warm_server()


onerror:
    stop_warm_server()


WARM = {}  # the run's warm server (sglora/warm.py), started by onstart


def start_warm_server():
    """On a local run, start the server that the jobs' `sglora` processes fork from, so
    they import torch and transformers once per run instead of once per job (config
    `warm_start`; SGLORA_WARM=0 in the environment turns it off too)."""
    from sglora.warm import WARM_ENV, start

    if not workflow.local_exec or not config.get("warm_start", True) or os.environ.get(WARM_ENV) == "0":
        return
    server, where = start()
    if server is None:
        print(f"note: {where}; every job imports torch itself", file=sys.stderr)
        return
    WARM.update(server=server, path=where)
    os.environ[WARM_ENV] = where


def stop_warm_server():
    from sglora.warm import stop

    stop(WARM.get("server"), WARM.get("path"))


def as_json(obj):
    """A config section as the JSON string a `sglora` step takes (sorted: stable params)."""
    return json.dumps(obj or {}, sort_keys=True)


def backbone_input(wildcards=None):
    """The backbone as a rule input when this workflow builds it (the embedded CLIP)."""
    return [] if PRETRAINED else [BACKBONE]


def manifest(dataset):
    return f"{R}/data/{dataset}/manifest.parquet"


def image_cache(dataset):
    """A dataset's uint8 image cache (rule image_cache, sglora/data/images.py)."""
    return f"{R}/data/{dataset}/image_cache"


def lora_dir(dataset, task):
    return f"{R}/loras/{dataset}/{task}"


def res(rule_name, key, default):
    """A resource of a rule: config `resources.<rule>.<key>` or the default."""
    return config.get("resources", {}).get(rule_name, {}).get(key, default)


def heavy_resources(rule_name, mem_mb, runtime):
    """What a heavy step asks for, as `resources: **heavy_resources(name, mem_mb, runtime)`:
    one GPU when the backbone is a pretrained model (the embedded CLIP trains on CPUs),
    `mem_mb` and `runtime` (minutes); each overridable in config `resources.<name>.<key>`."""
    return dict(
        gpu=lambda w: res(rule_name, "gpu", 1 if PRETRAINED else 0),
        mem_mb=lambda w: res(rule_name, "mem_mb", mem_mb),
        runtime=lambda w: res(rule_name, "runtime", runtime),
    )


def group_methods(kind):
    return [(g, m) for g, spec in GROUPS.items() for m in spec["methods"] if m in kind]


FIGURES = ("experts_tsne", "samples_tsne", "r1_bars")  # <name>.png and .pdf, written by the figures step


def all_outputs():
    """What a run ends with: every group's table, the figures, the premises, the chosen CVAE, the results page."""
    return (
        [f"{R}/tables/{g}.md" for g in GROUPS]
        + [f"{R}/figures/{name}.png" for name in FIGURES]
        + [
            f"{R}/premises/premises.json",
            f"{R}/cvae/selected",
            f"{R}/selection/selection.json",
            f"{R}/tables/ablation.md",
            RESULTS_PAGE,
        ]
        + ([f"{R}/captioning/quality.md"] if EMBEDDED else [])
        + ([f"{R}/tables/pooled/{g}.md" for g in GROUPS] if REPLICATES > 1 else [])
    )


#: the run's results page: config results_page.path (the default publishes docs/results.md), else inside results
RESULTS_PAGE = config.get("results_page", {}).get("path") or f"{R}/results.md"


def paired_groups():
    """Groups with a paired table (SG-LoRA minus each method): those that evaluate SG-LoRA."""
    return [g for g, spec in GROUPS.items() if "sglora" in spec["methods"]]


def verdict_groups():
    """Groups with a per-task verdict table (SG-LoRA minus the nearest expert on each task)."""
    return [g for g in paired_groups() if "nearest_expert" in GROUPS[g]["methods"]]


# The premises are measured on the validation tasks only: no test task's number is looked at
# before the tables.


def premise_headroom():
    """Whether the premises measure the Oracle's headroom: when an unseen group compares
    with the Oracle (then the validation tasks get Oracle LoRAs and both evaluations)."""
    return any(spec["unseen"] and {"zero_shot", "oracle"} <= set(spec["methods"]) for spec in GROUPS.values())


def premise_gate():
    """The description premises' file as an input of every LoRA-training job when a failed
    premise stops the run (embedded experts' dataset, or premises.enforce): a world whose
    descriptions fail the premise then stops before any LoRA is trained ([] otherwise)."""
    spec = PremiseSpec(**{k: v for k, v in (config.get("premises") or {}).items() if k == "enforce"})
    return [f"{R}/premises/descriptions.json"] if spec.enforced_on(EXPERTS["dataset"], EMBEDDED) else []


def premise_transfer_tasks():
    """The validation tasks on which family transfer is measured: those of the experts' dataset."""
    return VALIDATION["tasks"] if VALIDATION["dataset"] == EXPERTS["dataset"] else []


def validation_metrics(method):
    return f"{R}/premises/validation/{method}"


def raw_manifest(w):
    kind = config["datasets"][w.dataset]["kind"]
    if kind == "embedded":
        return f"{WORLD_R}/data/{w.dataset}/world/manifest.raw.parquet"
    return f"{R}/data/{w.dataset}/raw/manifest.raw.parquet"


def caption_backend(w):
    return config["datasets"][w.dataset].get("captioner", {}).get("backend", "none")


def caption_shards(dataset):
    """The caption step's resumable shards of a dataset (sglora/data/captioning/shards.py)."""
    return f"{R}/data/{dataset}/caption_shards"


def world_truth(dataset):
    """An embedded world's captions.parquet: every image's class, attributes and own captions."""
    return f"{WORLD_R}/data/{dataset}/world/captions.parquet"


def uses_world_captioner(dataset):
    """An embedded world captioned by Qwen2-VL with no model named: the captioner this
    workflow trains (rule pretrain_captioner), prompted with its own demonstrations."""
    spec = config["datasets"][dataset]
    cap = spec.get("captioner", {})
    return spec["kind"] == "embedded" and cap.get("backend") == "qwen2vl" and "model" not in cap.get("options", {})


def captioner_input(w):
    """The trained captioner as an input of a dataset's caption job, where it uses it."""
    return [CAPTIONER] if uses_world_captioner(w.dataset) else []


def caption_options(w):
    cap = config["datasets"][w.dataset].get("captioner", {})
    opts = dict(cap.get("options", {}))
    if cap.get("backend") == "synthetic":
        opts.setdefault("captions_file", world_truth(w.dataset))
    if uses_world_captioner(w.dataset):
        opts.update(model=CAPTIONER, demonstrations_file=f"{CAPTIONER}/demonstrations.json")
    return as_json(opts)


def caption_quality_datasets(wildcards=None):
    """The --datasets of caption_quality: each embedded world's captioned manifest, truth, shards and captioner."""
    out = {}
    for d in EMBEDDED:
        w = SimpleNamespace(dataset=d)
        out[d] = {
            "manifest": manifest(d),
            "truth": world_truth(d),
            "shard_dir": caption_shards(d),
            "backend": caption_backend(w),
            "options": json.loads(caption_options(w)),
        }
    return as_json(out)


def wanted_tasks():
    wanted = {"experts.tasks": {EXPERTS["dataset"]: EXPERTS["tasks"]}}
    for g, spec in GROUPS.items():
        wanted[f"groups.{g}.tasks"] = {spec["dataset"]: spec["tasks"]}
    wanted["validation.tasks"] = {VALIDATION["dataset"]: VALIDATION["tasks"]}
    for g in own_validation_groups():
        wanted[f"groups.{g}.validation.tasks"] = {GROUPS[g]["validation"]["dataset"]: GROUPS[g]["validation"]["tasks"]}
    return wanted


def wanted_by(dataset, task):
    """The config keys that list ``task`` of ``dataset``, as ``sglora check-tasks --wanted`` takes them."""
    keys = {k: {dataset: [task]} for k, by in wanted_tasks().items() if task in by.get(dataset, [])}
    return keys or {"requested": {dataset: [task]}}


def check_file(dataset, task):
    """The output of one task's check (rule check_tasks)."""
    return f"{R}/tasks/{dataset}/{task}.json"


def group_checks(w):
    """The checks of a group's tasks: its evaluation waits for them."""
    return [check_file(group_dataset(w), t) for t in GROUPS[w.group]["tasks"]]


# --- a group's settings, as input functions and params of the rules over {group} ---


def group_tasks(w):
    """A group's task ids, as the comma-separated list a `sglora` step takes."""
    return ",".join(GROUPS[w.group]["tasks"])


def group_dataset(w):
    return GROUPS[w.group]["dataset"]


def group_seen(w):
    """``--seen`` for a group of seen tasks (``unseen: false``), else nothing."""
    return "" if GROUPS[w.group]["unseen"] else "--seen"


def group_title(w):
    return GROUPS[w.group].get("title", w.group)


def group_manifest(w):
    return manifest(group_dataset(w))


def group_images(w):
    return image_cache(group_dataset(w))


def group_loras(w):
    """The Oracle LoRA folders of a group's tasks."""
    return [lora_dir(group_dataset(w), t) for t in GROUPS[w.group]["tasks"]]


def evaluation_input(w):
    """What a method's evaluation reads beside the group's data: its candidates file (from the
    step the registry names), MoLE's trained mixture, or nothing (Zero-Shot CLIP)."""
    if METHODS[w.method].candidates:
        return {"candidates": f"{R}/candidates/{w.group}/{w.method}.safetensors"}
    return {"mole": f"{R}/mole"} if w.method == "mole" else {}


def evaluation_arguments(w, input):
    """The method's own arguments of its evaluation step (sglora/methods.py ``evaluate``)."""
    if "mole" in input.keys():
        return f"--mole {shlex.quote(input.mole)}"
    method = f"--method {shlex.quote(w.method)}"
    if "candidates" in input.keys():
        return f"{method} --candidates {shlex.quote(input.candidates)} --lora {shlex.quote(as_json(config['lora']))}"
    return method


def pdiff_tasks():
    return sorted({t for spec in GROUPS.values() if "pdiff" in spec["methods"] for t in spec["tasks"]})


def metric_dirs(wildcards=None, root=R):
    """``"<group>/<method>"`` -> the metric folder of every evaluation (of the run in ``root``)."""
    return {f"{g}/{m}": f"{root}/metrics/{g}/{m}" for g, spec in GROUPS.items() for m in spec["methods"]}


def pooled_metric_dirs():
    """``"<k>/<group>/<method>"`` -> the metric folders of training replicates 1 .. R-1."""
    return {
        f"{k}/{key}": path
        for k in range(1, REPLICATES)
        for key, path in metric_dirs(root=replicate_results(R, k)).items()
    }


def optional_flag(flag, value):
    """``flag value`` for a step's optional setting, or nothing where the config leaves it unset (None)."""
    return "" if value is None else f"{flag} {shlex.quote(str(value))}"


def keyed(paths):
    """A ``{key: path}`` map as the ``KEY=PATH`` items a `sglora` step takes (tables, figures)."""
    return [f"{key}={path}" for key, path in paths.items()]


def backbone_param(wildcards, input):
    """The backbone a step loads: the built one (an input) or the configured id/path."""
    return input.backbone[0] if not PRETRAINED else BACKBONE


def parent(path, levels=1):
    """A folder above an input or output file (for steps that take a root folder)."""
    p = Path(path)
    for _ in range(levels):
        p = p.parent
    return str(p)


def figure_loras():
    """``"<dataset>/<task>"`` -> the Oracle LoRA folders the figures draw (unseen groups that evaluate the Oracle)."""
    return {
        f"{spec['dataset']}/{t}": lora_dir(spec["dataset"], t)
        for spec in GROUPS.values()
        if spec["unseen"] and "oracle" in spec["methods"]
        for t in spec["tasks"]
    }


def figure_candidates():
    """``"<group>/<method>"`` -> the candidates files the figures may draw (written by `sglora candidates`)."""
    return {
        f"{g}/{m}": f"{R}/candidates/{g}/{m}.safetensors"
        for g, spec in GROUPS.items()
        for m in spec["methods"]
        if METHODS[m].candidates == "candidates"
    }


def samples_group():
    """The group of the Figure 10 t-SNE: the first unseen group, in config order, that
    evaluates SG-LoRA and the Oracle ("" if none)."""
    for g, spec in GROUPS.items():
        if spec["unseen"] and {"sglora", "oracle"} <= set(spec["methods"]):
            return g
    return ""
