"""Shared set-up of the analysis scripts (family_transfer.py): the
arguments that name a finished run and the pieces of it they all load."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parents[1]


def finished_run(doc: str, argv=None, extra: dict | None = None) -> SimpleNamespace:
    """Parse ``--results --config --group`` (plus ``extra`` options: name -> default) and
    load the run's config, evaluation group, repository, expert table and backbone."""
    from sglora.backbone.clip import load_clip
    from sglora.experts.repository import Repository

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results/embedded")
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--group", default="in_dataset")
    for name, default in (extra or {}).items():
        ap.add_argument(f"--{name}", default=default)
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    res = Path(args.results)
    group = cfg["groups"][args.group]
    repo = Repository(res / "repository")
    model, processor = load_clip(str(res / "backbone"))
    return SimpleNamespace(args=args, cfg=cfg, res=res, group=group, repo=repo, experts=repo.experts(),
                           model=model, processor=processor,
                           manifest=res / "data" / group["dataset"] / "manifest.parquet")
