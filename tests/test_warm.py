"""Warm starts (sglora/warm.py): a step run in a child of the warm server is the job's own
process -- same bytes, same exit status, same streams -- and a job the server cannot stand
in for runs in its own process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sglora import warm

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOME = os.environ.get("HOME", "/tmp")
TRAINING = {"epochs": 3, "snapshots": 2, "lr": 0.01, "batch_size": 8, "seed": 0, "device": "cpu"}


def job_env(**extra) -> dict:
    """A Snakemake job's environment: the run's, plus the per-job thread variables."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": HOME,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return env | {k: "1" for k in warm.THREAD_VARS} | extra


@pytest.fixture(scope="module")
def server():
    folder = Path(tempfile.mkdtemp(prefix="sgw-"))  # a Unix socket's path must stay short
    proc, path = warm.start(folder, wait=120, env={k: v for k, v in job_env().items() if k not in warm.PER_JOB})
    assert proc is not None, path
    yield path
    warm.stop(proc, path)
    assert proc.returncode == 0 and not folder.exists()  # stopped cleanly, its folder removed


def sglora(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "sglora"), *args], env=env, capture_output=True, text=True, **kw)


def train_args(tiny_world, tiny_clip, out: Path, threads: int) -> list[str]:
    return ["train-lora", "--backbone", tiny_clip, "--manifest", str(tiny_world / "manifest.parquet"), "--task",
            "tiger_lily", "--out", str(out), "--training", json.dumps(TRAINING), "--threads", str(threads)]


def folder_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("threads", [1, 2])
def test_a_warm_child_trains_the_bytes_a_fresh_process_trains(server, tiny_world, tiny_clip, tmp_path, threads):
    env = job_env(OMP_NUM_THREADS=str(threads))
    fresh = sglora(train_args(tiny_world, tiny_clip, tmp_path / "fresh", threads), env)
    warmed = sglora(train_args(tiny_world, tiny_clip, tmp_path / "warm", threads), env | {warm.WARM_ENV: server})
    assert fresh.returncode == 0 and warmed.returncode == 0, warmed.stderr[-2000:]
    assert "running in this process" not in warmed.stderr  # it ran in the server's child,
    from sglora.analyses.results_page import WARM_USAGE

    assert WARM_USAGE.search(warmed.stderr)  # and says what it used, as the results page reads it
    assert warmed.stdout == fresh.stdout
    assert folder_bytes(tmp_path / "warm") == folder_bytes(tmp_path / "fresh")


def test_a_warm_child_reports_the_step_error_and_its_exit_status(server, tmp_path):
    env = job_env(**{warm.WARM_ENV: server})
    proc = sglora(["check-tasks", "--manifest", f"world={tmp_path / 'missing.parquet'}", "--wanted", "{}",
                   "--out", str(tmp_path / "out.json")], env)
    assert proc.returncode == 2
    assert "missing.parquet" in proc.stderr and "running in this process" not in proc.stderr
    usage = sglora(["check-tasks", "--no-such-flag"], env)
    assert usage.returncode == 2 and "the following arguments are required: --manifest" in usage.stderr


def test_a_job_whose_environment_differs_runs_in_its_own_process(server, tmp_path):
    env = job_env(**{warm.WARM_ENV: server, "SGLORA_SOMETHING_ELSE": "1"})
    proc = sglora(["check-tasks", "--manifest", f"world={tmp_path / 'missing.parquet'}", "--wanted", "{}",
                   "--out", str(tmp_path / "out.json")], env)
    assert "declined (its environment differs from the warm server's in SGLORA_SOMETHING_ELSE)" in proc.stderr
    assert proc.returncode == 2 and "missing.parquet" in proc.stderr  # and it still ran
    gone = sglora(["check-tasks", "--wanted", "{}", "--out", "x"], job_env(**{warm.WARM_ENV: str(tmp_path / "s")}))
    assert "no warm server at" in gone.stderr and "--manifest" in gone.stderr


def test_mismatch_ignores_only_what_snakemake_and_the_shell_set_per_job():
    ident = {"executable": "/venv/bin/python", "path": ["/lib"], "package": "/src/sglora"}
    base = {"PATH": "/bin", "HOME": "/h"}

    def request(**env):
        return {"identity": dict(ident), "env": base | {"OMP_NUM_THREADS": "2", "TMPDIR": "/t", "PWD": "/w",
                                                        warm.WARM_ENV: "/s"} | env}

    assert warm.mismatch(request(), ident, base | {"OMP_NUM_THREADS": "1"}) is None
    assert "HF_HUB_OFFLINE" in warm.mismatch(request(HF_HUB_OFFLINE="1"), ident, base)
    assert "OMP_NUM_THREADS" in warm.mismatch(request(OMP_NUM_THREADS=""), ident, base)
    other = request()
    other["identity"]["package"] = "/elsewhere/sglora"
    assert warm.mismatch(other, ident, base) == "its package differs from the warm server's"


def test_a_child_stops_when_its_job_process_is_gone():
    """kill -9 of a job's process closes its end of the socket: the child's watch ends it."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        warm._watch(theirs)  # never returns
    theirs.close()
    time.sleep(0.2)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still running while the job is there
    ours.close()
    deadline = time.monotonic() + 10
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status[1]) == 143


def test_the_server_stops_with_the_process_that_started_it_and_removes_its_folder(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="sgw-"))
    try:
        code = ("import sys, time; sys.path.insert(0, %r); from sglora import warm; "
                "p, s = warm.start(%r, wait=120); print(p.pid, flush=True); time.sleep(600)") % (str(ROOT), str(folder))
        parent = subprocess.Popen([sys.executable, "-c", code], env=job_env(), stdout=subprocess.PIPE, text=True)
        server_pid = int(parent.stdout.readline())
        assert (folder / "server.sock").exists()
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 15
        while Path(f"/proc/{server_pid}").exists() and time.monotonic() < deadline:
            state = Path(f"/proc/{server_pid}/stat").read_text().split()[2] if Path(f"/proc/{server_pid}").exists() else "X"
            if state == "Z":
                break
            time.sleep(0.1)
        assert not folder.exists()  # the socket, the ready file and the log: nobody else would remove them
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("warm_env", ["", "0"])
def test_a_snakemake_run_starts_and_stops_its_server(tmp_path, warm_env):
    """With the server (the default) and without it (SGLORA_WARM=0) a run completes; no job
    is declined, and no server or server folder outlives the run."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "TMPDIR": str(tmp)} | ({warm.WARM_ENV: warm_env} if warm_env else {})
    results = tmp_path / "results"
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "--configfile", str(ROOT / "config/tiny.yaml"),
                           "--config", f"results={results}", "--until", "check_tasks"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [p.read_text() for p in (results / "logs").rglob("*.log")]
    assert len(logs) > 5 and not any("declined" in text for text in logs)
    assert not list(tmp.glob("sglora-warm-*"))
    assert not subprocess.run(["pgrep", "-f", f"warm-server --socket {tmp}"], capture_output=True).stdout
