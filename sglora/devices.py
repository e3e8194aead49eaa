"""Which device a step runs on, and one GPU per job on a multi-GPU workstation.

``pick_device("auto")`` is CUDA when available. On a workstation, Snakemake runs up to
``--resources gpu=N`` GPU jobs at once but never says which GPU each should use; without
help they would all land on ``cuda:0``. :func:`acquire_gpu_slot` gives each job its own:
it takes an exclusive ``flock`` on ``<lock_dir>/gpu<i>.lock`` for the first free device
and sets ``CUDA_VISIBLE_DEVICES=<i>`` before CUDA starts in the process. The kernel
drops the lock when the process ends, however it ends (a crash, ``kill -9``), so a slot
is never lost. The workflow turns this on for local runs by exporting
``SGLORA_GPU_SLOTS=<results>/gpu_slots/<host>``; on SLURM the scheduler assigns devices.

Nothing heavy is imported at module level (torch only inside :func:`pick_device`): the
Snakefile uses this module to count the GPUs present.
"""

from __future__ import annotations

import fcntl
import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SLOTS_ENV = "SGLORA_GPU_SLOTS"  #: lock folder; set by the workflow on local runs with GPUs
MALLOC_ENV = "SGLORA_MALLOC"  #: "0" leaves the C library's malloc settings as they are (see tune_allocator)

#: glibc mallopt parameters (malloc.h) and the values tune_allocator sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW = 32 << 20  #: blocks up to this size come from the heap (glibc's largest mmap threshold)
TRIM_ABOVE = 1 << 30  #: the heap is given back to the kernel only when this much is free at its top


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` ids: that variable when
    it is set (empty or ``-1`` = none), else one per ``/dev/nvidia<N>`` device file. No
    CUDA call: counting never initialises a driver, so a slot can still be chosen."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        out = []
        for d in ids:
            if d.startswith("-"):  # CUDA stops at the first invalid id
                break
            out.append(d)
        return out
    return sorted((p.removeprefix("/dev/nvidia") for p in glob.glob("/dev/nvidia[0-9]*")), key=int)


def pick_device(device: str = "auto"):
    """The ``torch.device`` of a device setting: ``auto`` is CUDA when available, else the CPU
    (torch is imported here, not at module level)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def memory_mb() -> int:
    """Physical memory of this machine in MB."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)


def wants_gpu(setting: str) -> bool:
    """Whether a device setting will use a GPU here (``auto`` with a GPU visible, or ``cuda``)."""
    return setting.startswith("cuda") or (setting == "auto" and bool(visible_gpus()))


@dataclass
class GpuSlot:
    """One GPU held by this process (its lock file stays open until release or exit)."""

    device: str  #: the CUDA_VISIBLE_DEVICES id this process now owns
    lock: IO  #: the open, locked file; closing it (or exiting) frees the slot

    def release(self) -> None:
        """Free the slot."""
        self.lock.close()


def try_gpu_slot(lock_dir: str | Path, devices: list[str] | None = None) -> GpuSlot | None:
    """Lock the first free device of ``devices`` (default: :func:`visible_gpus`) and set
    ``CUDA_VISIBLE_DEVICES`` to it; ``None`` when every device is taken."""
    devices = visible_gpus() if devices is None else devices
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        f = open(lock_dir / f"gpu{device}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        return GpuSlot(device, f)
    return None


def acquire_gpu_slot(lock_dir: str | Path, devices: list[str] | None = None, poll: float = 2.0) -> GpuSlot:
    """:func:`try_gpu_slot`, waiting (``poll`` seconds between tries) until a device is free."""
    from .io import SGLoraError

    devices = visible_gpus() if devices is None else devices
    if not devices:
        raise SGLoraError(f"{SLOTS_ENV}={lock_dir}: no GPU visible to share out")
    while (slot := try_gpu_slot(lock_dir, devices)) is None:
        time.sleep(poll)
    return slot


def tune_allocator() -> bool:
    """Let glibc's malloc keep freed memory in the process instead of returning it to the
    kernel and faulting it back in on the next allocation.

    Every LoRA that evaluation (and selection, the premises, novelty) scores allocates and
    frees the same activation buffers; with glibc's defaults they go back to the kernel
    each time, which cost ~6 of the ~35 CPU-seconds of one evaluation job of the embedded
    default in system time (``benchmarks/bench_eval.py`` measures the job with and without,
    side by side). Blocks up to 32 MiB then come from the heap, and the heap shrinks only
    when 1 GiB is free at its top: memory is held until the process (one Snakemake job)
    ends, and a job's peak grows a little (that evaluation job: 760 instead of 718 MB max
    RSS; expert training unchanged).

    Called once by the CLI before any step runs. Does nothing, and returns ``False``, with
    ``SGLORA_MALLOC=0``, where the user set glibc's own ``MALLOC_*_`` variables or
    ``GLIBC_TUNABLES``, and on a C library without glibc's ``mallopt`` (macOS, musl)."""
    import platform

    if os.environ.get(MALLOC_ENV, "1") == "0" or "GLIBC_TUNABLES" in os.environ:
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
