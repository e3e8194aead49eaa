"""The ``sglora study-*`` subcommands: the steps of the studies that run the pipeline
several times (``workflow/studies/``). Each parses its flags and calls one function of
:mod:`sglora.studies`."""

from __future__ import annotations

import json


def cmd_study_config(a):
    import yaml

    from .io import SGLoraError, atomic_path
    from .studies import size_config

    try:
        base = yaml.safe_load(open(a.base))
    except (OSError, yaml.YAMLError) as err:
        raise SGLoraError(f"{a.base}: cannot read the base config ({err})") from err
    cfg = size_config(base, a.experts_per_family, a.results)
    with atomic_path(a.out) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=True))
    print(json.dumps({"experts_per_family": a.experts_per_family, "experts": cfg["experts"]["tasks"]}))


def cmd_study_collect(a):
    import yaml

    from .io import SGLoraError, write_json
    from .studies import collect_size

    files: dict[str, dict[str, str]] = {}
    for item in a.metrics:
        key, _, path = item.partition("=")
        method, _, task = key.partition("/")
        if not (method and task and path):
            raise SGLoraError(f"--metrics: {item!r} is not METHOD/TASK=FILE")
        files.setdefault(method, {})[task] = path
    experts = yaml.safe_load(open(a.config))["experts"]["tasks"]
    write_json(a.out, collect_size(a.experts_per_family, experts, files))
    print(json.dumps({"experts_per_family": a.experts_per_family, "methods": sorted(files)}))


def cmd_study_summary(a):
    from .io import read_json
    from .studies import write_study

    rows = write_study([read_json(f) for f in a.sizes], a.against, a.markdown, a.out, a.figures, title=a.title,
                       n_boot=a.bootstrap)
    print(json.dumps({"rows": len(rows)}))


def register(sub) -> None:
    s = sub.add_parser("study-config", help="Derive one size's pipeline config from the base config "
                       "(the first N experts of every family).")
    s.add_argument("--base", required=True, help="the base pipeline config (YAML)")
    s.add_argument("--experts-per-family", type=int, required=True)
    s.add_argument("--results", required=True, help="the size's results folder")
    s.add_argument("--out", required=True, help="the derived config (YAML)")
    s.set_defaults(func=cmd_study_config)

    s = sub.add_parser("study-collect", help="Collect one size's metrics files into one JSON.")
    s.add_argument("--config", required=True, help="the size's pipeline config (its experts are recorded)")
    s.add_argument("--experts-per-family", type=int, required=True)
    s.add_argument("--metrics", nargs="+", required=True, metavar="METHOD/TASK=FILE")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_study_collect)

    s = sub.add_parser("study-summary", help="The repository-size table (SG-LoRA minus each method, with paired "
                       "95%% intervals, per size) and its figure.")
    s.add_argument("--sizes", nargs="+", required=True, help="collected size files (sglora study-collect)")
    s.add_argument("--against", nargs="+", default=["topk_weighted", "oracle"])
    s.add_argument("--title", default="Repository size")
    s.add_argument("--bootstrap", type=int, default=2000)
    s.add_argument("--markdown", required=True)
    s.add_argument("--out", required=True, help="the table's numbers (JSON)")
    s.add_argument("--figures", required=True, help="figure folder (repository_size.png/.pdf)")
    s.set_defaults(func=cmd_study_summary)
