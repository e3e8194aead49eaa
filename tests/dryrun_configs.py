"""Dry-run (`snakemake -n`) the DAG of every shipped config: config.yaml and every pipeline
config under config/ (config/*.yaml, the add-ons in config/embedded/, the studies' bases),
and every study (workflow/studies/*.smk with its config in config/studies/).

Presets that read real datasets are pointed at miniature copies of those datasets
written by tests/miniatures.py, so the adapters' paths exist.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    configs = [ROOT / "config.yaml"] + sorted(p for p in (ROOT / "config").rglob("*.yaml")
                                              if "datasets" in (yaml.safe_load(p.read_text()) or {}))
    snakemake = str(Path(sys.executable).parent / "snakemake")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = None
        for cfg_path in configs:
            cfg = yaml.safe_load(cfg_path.read_text())
            if any(d.get("kind") != "embedded" for d in cfg.get("datasets", {}).values()):
                if roots is None:
                    from miniatures import write_all

                    roots = write_all(Path(tmp) / "data")
                for d in cfg["datasets"].values():
                    if d["kind"] != "embedded":
                        d["root"] = str(roots[d["kind"]])
            cfg["results"] = str(Path(tmp) / "results" / cfg_path.stem)
            cfg.pop("compare_runs", None)  # reads another run's finished results (run that one first)
            patched = Path(tmp) / f"{cfg_path.stem}.yaml"
            patched.write_text(yaml.safe_dump(cfg))
            t = time.time()
            proc = subprocess.run([snakemake, "-n", "--quiet", "rules", "--configfile", str(patched)],
                                  cwd=ROOT, capture_output=True, text=True)
            status = "ok" if proc.returncode == 0 else "FAILED"
            print(f"dry run {cfg_path.relative_to(ROOT)}: {status} ({time.time() - t:.1f} s)")
            if proc.returncode:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                failed.append(cfg_path)
        for study in sorted((ROOT / "workflow" / "studies").glob("*.smk")):
            cfg = yaml.safe_load((ROOT / "config" / "studies" / f"{study.stem}.yaml").read_text())
            cfg["results"] = str(Path(tmp) / "results" / f"study_{study.stem}")
            patched = Path(tmp) / f"study_{study.stem}.yaml"
            patched.write_text(yaml.safe_dump(cfg))
            proc = subprocess.run([snakemake, "-n", "--quiet", "rules", "-s", str(study), "--configfile", str(patched)],
                                  cwd=ROOT, capture_output=True, text=True)
            print(f"dry run {study.relative_to(ROOT)}: {'ok' if proc.returncode == 0 else 'FAILED'}")
            if proc.returncode:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                failed.append(study)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
