"""The pipeline through a real SLURM cluster: a single-node cluster started on localhost
by this test (munged, slurmctld, slurmd as root, all state in a temporary folder), then
`snakemake --profile workflow/profiles/slurm --configfile config/tiny.yaml` with the
snakemake-executor-plugin-slurm. Evidence that jobs really went through sbatch: every
SLURM job id snakemake reports is in slurmctld's log as a submitted batch job that ran an
srun step on the node and exited 0; the plugin's per-rule log folders name exactly the
heavy rules; the light rules (Snakefile `localrules:`) ran on the submit side only.

The cluster: no accounting (AccountingStorageType=accounting_storage/none,
JobAcctGatherType=jobacct_gather/none), so job status comes from squeue
(--slurm-status-command squeue, with MinJobAge=3600 so finished jobs stay listed);
ProctrackType=proctrack/linuxproc and TaskPlugin=task/none, so no cgroup plugin is loaded
and no cgroup.conf is needed (slurmd starts even in a sandbox whose cgroup tree it could
not manage). Its own ports, munge socket and key, so it touches no other SLURM or munge
on the machine and writes nothing under /etc.

Skips (never fails) when SLURM cannot be had: not root, no apt-get, the packages
(slurmctld slurmd slurm-client munge) do not install, the plugin is not installed, or
the daemons do not come up; the reason says which.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
COMMANDS = ["munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol"]
# Rules of config/tiny.yaml's DAG, by where they must run.
LOCAL = {"world", "check_tasks", "assemble", "candidates_oracle", "candidates_validation_oracle", "candidates_multitask", "candidates_merging", "candidates_pdiff",
         "sample_sglora", "sample_sglora_paper", "export_cvae", "selection_summary", "tables", "figures", "candidates_generator",
         "ablation", "results_page", "controls_table", "caption_quality", "all"}  # fmt: skip
REMOTE = {"caption", "pretrain_backbone", "image_cache", "train_multitask", "train_cvae", "select", "premises", "train_mole",
          "train_pdiff", "embed", "evaluate", "evaluate_validation", "novelty", "spaces_select", "spaces_evaluate", "select_training",
          "controls"}  # fmt: skip
# ... and tiny.yaml's LoRAs, in batches (lora_batches unset: at most 2 per reader, workflow/rules/loras_common.smk)
REMOTE |= {f"train_lora_{reader}_{k}" for reader in ("experts", "oracles_in_dataset", "oracles_cross_dataset")
           for k in (0, 1)} | {"train_lora_validation_0"}


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=SYSTEM_PATH)


def _run(cmd: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _install_slurm() -> str | None:
    """Install the SLURM and munge packages if a command is missing; the skip reason or None."""
    missing = [c for c in COMMANDS if not _which(c)]
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"SLURM commands {missing} missing and not root, so apt-get cannot install them"
    if not _which("apt-get"):
        return f"SLURM commands {missing} missing and no apt-get to install {PACKAGES}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    try:
        proc = _run(install, env=env)
        if proc.returncode:  # stale package lists: update once and retry
            _run(["apt-get", "update", "-q"], env=env)
            proc = _run(install, env=env)
    except subprocess.TimeoutExpired:
        return f"apt-get install {' '.join(PACKAGES)} timed out"
    if proc.returncode:
        return f"apt-get install {' '.join(PACKAGES)} failed: {(proc.stderr or proc.stdout)[-500:]}"
    missing = [c for c in COMMANDS if not _which(c)]
    return f"SLURM commands {missing} still missing after apt-get install" if missing else None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 8000


def _tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path.name} not written)"


def _slurm_conf(d: Path, node: str, ports: list[int]) -> str:
    cpus = max(os.cpu_count() or 1, 2)  # pretrain_backbone asks for 2 CPUs
    mem = max(int(_mem_mb() * 0.8), 9000)  # the tiny DAG's largest request is 8000 MB
    return f"""# written by sglora tests/test_slurm.py: a throw-away single-node cluster
ClusterName=sgloratest
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=sglora Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM cluster; yields its environment and folders; stops it."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd as root (it launches jobs as their user); not root")
    reason = _install_slurm()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log", "bin"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    node = "sgloranode"
    conf = d / "slurm.conf"
    conf.write_text(_slurm_conf(d, node, _free_ports(2)))
    # The jobstep executor drops SLURM_* variables (SLURM_CONF too) before it calls srun
    # inside the job, so srun would look for /etc/slurm/slurm.conf; this shim, first on
    # PATH, points srun back at this cluster's config instead of writing one under /etc.
    shim = d / "bin" / "srun"
    shim.write_text(f"#!/bin/sh\nSLURM_CONF={conf} exec {_which('srun')} \"$@\"\n")
    shim.chmod(0o755)
    env = {"PATH": f"{d / 'bin'}:{BIN}:{SYSTEM_PATH}", "SLURM_CONF": str(conf), "HOME": str(d),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "LANG": "C.UTF-8",
           "PYTHONPATH": str(ROOT)}  # the jobs' `sglora` runs this checkout, as in test_workflow.py  # fmt: skip
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log = open(d / "log" / f"{name}.console", "w")
        procs.append(subprocess.Popen([_which(name), *args], env=env, stdout=log, stderr=subprocess.STDOUT))

    def stop() -> None:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def give_up(why: str) -> None:
        logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted((d / "log").glob("*")))
        stop()
        pytest.skip(f"SLURM test cluster did not start: {why}\n{logs}")

    try:
        start("munged", "-F", "--force", f"--key-file={key}", f"--socket={d}/munge/munge.sock",
              f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/seed")
        deadline = time.time() + 20
        while not (d / "munge" / "munge.sock").exists() and time.time() < deadline:
            time.sleep(0.2)
        if not (d / "munge" / "munge.sock").exists():
            give_up("munged made no socket")
        start("slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "-D", "-N", node, "-f", str(conf))
        deadline, state = time.time() + 90, ""
        while time.time() < deadline:
            if any(p.poll() is not None for p in procs):
                give_up("a daemon exited")
            try:
                state = _run(["sinfo", "-h", "-N", "-o", "%T"], timeout=30, env=env).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "sinfo timed out"
            if state.startswith("idle"):
                break
            time.sleep(1)
        else:
            give_up(f"node state {state!r} after 90 s")
        yield SimpleNamespace(dir=d, env=env, conf=conf, ctld_log=d / "log" / "slurmctld.log")
    finally:
        stop()


def test_profiles_parse():
    """Both profiles are valid YAML / YTE and say what the docs say (no cluster needed)."""
    import yte

    default = yaml.safe_load((ROOT / "workflow/profiles/default/config.yaml").read_text())
    # the GPU limit is the number of GPUs present, evaluated when snakemake reads the profile
    assert default["cores"] == "all" and default["resources"] == {"gpu": "?len(visible_gpus())"}
    assert default["rerun-incomplete"] and default["printshellcmds"]
    keys = {"SGLORA_SLURM_ACCOUNT": "acct", "SGLORA_SLURM_PARTITION": "cpu", "SGLORA_SLURM_GPU_PARTITION": "gpu",
            "SGLORA_SLURM_STATUS": "squeue"}  # fmt: skip
    for env in ({}, keys):
        saved = {k: os.environ.pop(k, None) for k in keys}
        os.environ.update(env)
        try:
            with open(ROOT / "workflow/profiles/slurm/config.yaml") as f:
                prof = yte.process_yaml(f, require_use_yte=True)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
        assert prof["executor"] == "slurm" and prof["jobs"] > 0
        assert prof["default-resources"]["mem_mb"] > 0 and prof["default-resources"]["runtime"] > 0
        if env:
            assert prof["default-resources"]["slurm_account"] == "acct"
            assert prof["default-resources"]["slurm_partition"] == "cpu"
            assert prof["set-resources"]["train_lora"] == {"slurm_partition": "gpu"}
            assert prof["slurm-status-command"] == "squeue"
        else:  # nothing cluster-specific unless the user says so
            assert "slurm_account" not in prof["default-resources"] and "set-resources" not in prof
            assert "slurm-status-command" not in prof


@pytest.mark.slow
def test_tiny_pipeline_runs_through_sbatch(slurm, tmp_path):
    results, slurm_logs = tmp_path / "results", tmp_path / "slurm_logs"
    cmd = [str(BIN / "snakemake"), "--profile", "workflow/profiles/slurm", "--configfile", "config/tiny.yaml",
           "--config", f"results={results}", "--jobs", "4", "--latency-wait", "5",
           "--slurm-status-command", "squeue",  # no accounting here, so no sacct
           "--slurm-init-seconds-before-status-checks", "5",
           "--slurm-logdir", str(slurm_logs), "--slurm-keep-successful-logs"]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm.env, capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    (tmp_path / "snakemake.log").write_text(out)
    ctld = slurm.ctld_log.read_text(errors="replace")
    assert proc.returncode == 0, f"{out[-6000:]}\n--- slurmctld.log\n{ctld[-2000:]}"
    print(f"tiny DAG through SLURM: {time.time() - t0:.0f} s")

    # the pipeline finished
    for group in ("in_dataset", "cross_dataset", "seen"):
        assert (results / "tables" / f"{group}.md").stat().st_size > 0
    assert (results / "figures" / "r1_bars.png").exists()

    # every job snakemake handed to SLURM was an sbatch job that ran an srun step and exited 0
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out))
    assert submitted, out[-3000:]
    slurmd_log = (slurm.dir / "log" / "slurmd.log").read_text(errors="replace")
    for job_id in submitted.values():
        assert re.search(rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b", ctld), job_id
        assert re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0", ctld), job_id
        assert re.search(rf"launch task StepId={job_id}\.0\b", slurmd_log), job_id
    assert len(set(submitted.values())) == len(submitted)

    # which rules went through sbatch: slurmctld still holds every job (MinJobAge) with the
    # comment the plugin gave it, rule_<rule>[_wildcards_<...>] ...
    rules = set()
    for job_id in submitted.values():
        info = _run(["scontrol", "show", "job", "-o", job_id], timeout=30, env=slurm.env).stdout
        assert "JobState=COMPLETED" in info, info
        rules.add(re.search(r"\bComment=rule_(\w+?)(?:_wildcards_\S*)?(?:\s|$)", info).group(1))
    assert rules == REMOTE, rules
    # ... and the plugin kept one log folder per rule (rule_<rule>/), one log per job
    assert {p.name.removeprefix("rule_") for p in slurm_logs.iterdir() if p.is_dir()} == REMOTE
    assert set(submitted.values()) <= {p.stem for p in slurm_logs.rglob("*.log")}
    # ... and which did not: the light rules ran on the submit side, never through sbatch
    ran_local = set(re.findall(r"^localrule (\w+):", out, re.M))
    assert ran_local == LOCAL, ran_local
    assert not re.search(r"^rule (?:" + "|".join(LOCAL) + r"):", out, re.M)
