"""Warm starts: on a local run, every ``sglora <step>`` job forks from one process that has
already imported torch, transformers and peft.

Each job of the embedded default is one ``sglora`` process, and before it does anything it
pays ~7-10 CPU-seconds of imports (torch, transformers' CLIP, peft, the CLI's settings
classes). With ~130 jobs of a few seconds' work each, that was a quarter of the default
DAG's CPU time. So the workflow's ``onstart`` handler starts :func:`serve` (``sglora
warm-server``) on a local run and exports ``SGLORA_WARM=<socket>``; a job's ``sglora``
process then hands its command to the server (:func:`delegate`), which forks a child that
runs :func:`sglora.cli.main` with the job's arguments, working directory, environment,
umask and standard streams (passed as file descriptors), and the job exits with the child's
status. The child is the same program as a fresh process with its imports already done:
the DAG's outputs are byte-identical with and without the server (tests/test_warm.py).

A job runs in its own process, as without a server, whenever the server cannot stand in for
a fresh process: no ``SGLORA_WARM``, the server is not there (cluster jobs, a run whose
server has exited), ``SGLORA_WARM=0``, or the job's interpreter, ``sys.path``, ``sglora``
package or environment differ from the server's in anything but the per-job variables
Snakemake sets (the thread variables ``OMP_NUM_THREADS`` ..., applied in the child with
``torch.set_num_threads`` as torch does when it starts; ``TMPDIR`` ...). The reason is
written to the job's log.

Signals reach the child: the job's process forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to it,
and a child whose job process has gone (``kill -9``) stops. The server stops when the
Snakemake process that started it exits, or when told (``onsuccess``/``onerror``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

WARM_ENV = "SGLORA_WARM"  #: the server's socket; "0" or unset: every job runs in its own process
#: set by Snakemake per job (shell.py): the thread counts ...
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
#: ... and the job's temporary folder
PER_JOB = THREAD_VARS + ("TMPDIR", "TMP", "TEMP", "TEMPDIR")
#: set by the shell that runs a job's command line, different in every shell
SHELL_VARS = ("PWD", "OLDPWD", "SHLVL", "_")
#: modules a step imports lazily, imported once by the server
PRELOAD = ("torch", "torch._inductor.config", "transformers", "transformers.models.clip.modeling_clip",
           "transformers.models.clip.processing_clip", "peft", "safetensors.torch", "numpy", "pandas",
           "pyarrow.parquet", "PIL.Image", "tqdm")
_HEADER = struct.Struct("!I")


def identity() -> dict:
    """What must be equal between a job's process and the server for a child of the server
    to be the program the job would have run: the interpreter, the import path (but its
    first entry, the script's folder or the working directory) and the ``sglora`` package."""
    import sglora

    return {"executable": os.path.realpath(sys.executable), "path": sys.path[1:],
            "package": os.path.realpath(os.path.dirname(sglora.__file__))}


def _environment(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in PER_JOB and k not in SHELL_VARS and k != WARM_ENV}


def mismatch(request: dict, server_identity: dict, server_env: dict) -> str | None:
    """Why a child of this server would not be the job's own process, or ``None``."""
    for key, value in server_identity.items():
        if request["identity"].get(key) != value:
            return f"its {key} differs from the warm server's"
    threads = request["env"].get("OMP_NUM_THREADS", "")
    if not threads.isdigit() or int(threads) < 1:
        return "OMP_NUM_THREADS is not set to a thread count"
    ours, theirs = _environment(server_env), _environment(request["env"])
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        return "its environment differs from the warm server's in " + ", ".join(differ[:5])
    return None


# -- the job's side -------------------------------------------------------------------


def _send(sock: socket.socket, obj: dict, fds: list[int]) -> None:
    data = json.dumps(obj).encode()
    socket.send_fds(sock, [_HEADER.pack(len(data)) + data], fds)


def delegate(argv: list[str], run=None, prepare=None) -> int | None:
    """Run ``sglora <argv>`` in a child of the warm server and return its exit status, or
    ``None`` when this process should run the step itself (nothing has run then).
    ``sglora warm-server ...`` is the server itself (:func:`server_main` with ``run`` and
    ``prepare``)."""
    if argv[:1] == ["warm-server"]:
        return server_main(argv[1:], run, prepare)
    path = os.environ.get(WARM_ENV, "")
    if not path or path == "0" or not argv or argv[0] in ("-h", "--help"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(path)
        umask = os.umask(0)
        os.umask(umask)
        _send(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                     "identity": identity()}, [0, 1, 2])
        sock.settimeout(None)
        reader = sock.makefile("r", encoding="utf-8")
        first = reader.readline().split(" ", 1)
    except OSError as err:
        sock.close()
        print(f"sglora: no warm server at {path} ({err.strerror or err}); running in this process", file=sys.stderr)
        return None
    if first[0] != "pid":
        sock.close()
        reason = first[1].strip() if len(first) > 1 else "it closed the connection"
        print(f"sglora: the warm server declined ({reason}); running in this process", file=sys.stderr)
        return None
    child = int(first[1])

    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    for line in reader:
        word, _, value = line.partition(" ")
        if word == "exit":
            code, cpu, rss = value.split()
            # Snakemake's benchmark file measures this process only: say what the child used
            print(f"sglora: ran in warm child {child}: {float(cpu):.1f} CPU-s, max RSS {float(rss):.0f} MB "
                  "(shared with the server)", file=sys.stderr)
            return int(code)
    print(f"sglora: the warm child {child} ended without an exit status (killed?)", file=sys.stderr)
    return 1


# -- the server's side ------------------------------------------------------------------


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    if len(data) < _HEADER.size:
        raise OSError("short request")
    (size,) = _HEADER.unpack(data[: _HEADER.size])
    body = data[_HEADER.size :]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise OSError("request cut short")
        body += more
    return json.loads(body), fds


def _watch(conn: socket.socket) -> None:
    """In a child: stop when the job's process has gone (its end of the socket closed)."""
    try:
        while conn.recv(64):
            pass
    except OSError:
        pass
    os._exit(143)


def _run_child(conn: socket.socket, request: dict, fds: list[int], run) -> None:
    """The forked child: become the job's process, run the step, report, exit."""
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile

        import torch

        tempfile.tempdir = None  # found again from the job's TMPDIR
        torch.set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
        sys.argv = ["sglora", *request["argv"]]
        conn.sendall(f"pid {os.getpid()}\n".encode())
        threading.Thread(target=_watch, args=(conn,), daemon=True).start()
        try:
            code = run(request["argv"], warm=False)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            import resource

            own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
            conn.sendall(f"exit {code} {cpu:.3f} {own.ru_maxrss / 1024:.1f}\n".encode())
        finally:
            os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


def preload() -> None:
    """Import what the steps import lazily (the glibc allocator tuned first, as every
    ``sglora`` process does)."""
    import importlib

    from .devices import tune_allocator

    tune_allocator()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def server_main(argv: list[str], run, prepare) -> int:
    """``sglora warm-server --socket PATH [--parent PID] [--ready FILE]`` (the workflow's
    ``onstart`` starts it through :func:`start` on a local run). ``run(argv, warm=False)``
    runs a step (:func:`sglora.cli.main`); ``prepare()`` builds the command line once."""
    import argparse

    p = argparse.ArgumentParser(prog="sglora warm-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="the Unix socket to listen on")
    p.add_argument("--parent", type=int, help="stop when this process (the Snakemake run) has exited")
    p.add_argument("--ready", help="a file written once the server accepts jobs")
    p.add_argument("--folder", help="the server's folder (start()'s): removed if the parent exits first")
    args = p.parse_args(argv)
    return serve(args.socket, run, prepare, args.parent, args.ready, args.folder)


def serve(path: str | Path, run, prepare, parent: int | None = None, ready: str | Path | None = None,
          folder: str | Path | None = None) -> int:
    """Serve warm starts on the Unix socket ``path`` until ``parent`` (a pid) exits or a
    SIGTERM arrives: each job's child calls ``run(argv, warm=False)``. ``prepare()`` runs
    once after the imports; ``ready``: a file written once the server accepts jobs;
    ``folder``: removed when the server stops because ``parent`` has gone (killed: nobody
    else will; a SIGTERM comes from :func:`stop`, which removes it)."""
    path = str(path)
    server_env = dict(os.environ)  # before the imports: some set variables (TORCHINDUCTOR_CACHE_DIR)
    preload()
    prepare()
    if threading.active_count() != 1:  # a thread's locks would be copied held into every child
        print(f"sglora warm-server: {threading.active_count()} threads after the imports; not serving",
              file=sys.stderr)
        return 1
    server_identity = identity()
    stopping = []
    signal.signal(signal.SIGTERM, lambda s, f: stopping.append(s))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(64)
        listener.settimeout(0.2)
        if ready:
            Path(ready).write_text(f"{os.getpid()}\n")
        while not stopping and (parent is None or os.getppid() == parent):
            _reap()
            try:
                conn, _ = listener.accept()
            except (TimeoutError, socket.timeout, InterruptedError):
                continue
            _handle(conn, listener, server_identity, server_env, run)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if folder and not stopping:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _handle(conn: socket.socket, listener: socket.socket, server_identity: dict, server_env: dict, run) -> None:
    fds: list[int] = []
    try:
        conn.settimeout(10)
        request, fds = _receive(conn)
        reason = mismatch(request, server_identity, server_env) if len(fds) == 3 else "no standard streams"
        if reason:
            conn.sendall(f"no {reason}\n".encode())
            return
        conn.settimeout(None)
        if os.fork() == 0:
            listener.close()
            _run_child(conn, request, fds, run)
    except (OSError, ValueError, KeyError) as err:
        print(f"sglora warm-server: a request failed ({err})", file=sys.stderr)
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def start(folder: str | Path | None = None, wait: float = 0.0, env: dict | None = None):
    """Start ``sglora warm-server`` for this process (the Snakemake run); returns ``(process,
    socket path)``. The socket appears once the server has done its imports; a job that
    starts before then runs in its own process. ``wait``: seconds to wait for that (a test's
    choice; the workflow does not wait) -- ``(None, reason)`` if it did not come up.
    ``env``: the environment the jobs will have, but for the per-job variables (default this
    process's): a job whose environment differs is declined."""
    import subprocess
    import tempfile

    folder = Path(folder or tempfile.mkdtemp(prefix="sglora-warm-"))
    path, ready = folder / "server.sock", folder / "ready"
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != WARM_ENV}
    env.update({k: "1" for k in THREAD_VARS})  # the imports run on one thread; each child sets its own
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen(["sglora", "warm-server", "--socket", str(path), "--parent", str(os.getpid()),
                                 "--ready", str(ready), "--folder", str(folder)], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait
    while wait and not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)  # its folder and log stay
            return None, f"sglora warm-server did not come up (see {folder / 'server.log'})"
        time.sleep(0.05)
    return proc, str(path)


def stop(proc, path: str | None = None) -> None:
    """Stop a server :func:`start` returned and wait for it; remove its folder (``path``'s)
    unless it failed (its log stays there then)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except Exception:
            proc.kill()
            proc.wait()
    if path and proc.returncode in (0, -signal.SIGTERM):
        import shutil

        shutil.rmtree(Path(path).parent, ignore_errors=True)
