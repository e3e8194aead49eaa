"""LoRA generation for unseen tasks (Eq. 9): d* -> c* = (mu*, var*) -> z ~ p(z | c*) -> X.

``sample_loras`` is the library call; ``generate`` is what ``sglora generate`` runs for
any text description.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .cvae import CVAE
from .io import (SGLoraError, Settings, exclusive, inside, one_line, read_json, reading, setting, umask,
                 write_json)
from .prior import Prior, PriorSpec, task_condition
from .repository import NORM_FACTOR, ExpertTable

log = logging.getLogger("sglora")


@dataclass
class SamplingSpec(Settings):
    """How SG-LoRA draws its LoRAs for a task (config section ``sampling``)."""

    section: ClassVar[str] = "sampling"

    samples: int = setting(10, "N samples per task and run (Figure 10 shows 50)", min=1)
    seed: int = setting(0, "base sampling seed (a task's seed derives from it and the task id)")
    temperature: float = setting(1.0, "scale of the latent noise; 0 = the decoded mean of p(z | c)", min=0)
    average: bool = setting(False, "a task's candidate is the mean of the N decoded samples (one LoRA per run)")
    runs: int = setting(1, "independent CVAE trainings (seeds cvae.seed, cvae.seed + 1, ...), each sampled", min=1)


def task_seed(seed: int, task: str) -> int:
    """A per-task seed, stable across runs and independent of which other tasks run."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}/{task}".encode()).digest()[:8], "little") % (2**63)


def sample_loras(cvae: CVAE, experts: ExpertTable, query: np.ndarray, prior: PriorSpec, n: int,
                 seed: int, seen_task: str | None = None, temperature: float = 1.0) -> tuple[np.ndarray, Prior]:
    """``n`` LoRA vectors for the task whose embedding is ``query``, and its prior.

    ``seen_task`` names the task when it is one of the repository's experts: its condition
    is then built exactly as the CVAE built it in training (``cvae.spec.condition``), e.g.
    without the task itself under ``loo``. ``temperature`` scales the latent noise
    (0 = the decoded mean of p(z | c)). ``query`` is also the description embedding d of
    a CVAE trained with ``cvae.describe``."""
    if cvae.dim != experts.mu.shape[1]:
        raise SGLoraError(f"the CVAE generates LoRAs of {cvae.dim} values, the repository's experts have "
                          f"{experts.mu.shape[1]}: the CVAE was trained for another repository")
    if prior.k > len(experts.tasks):
        log.warning(f"warning: prior.k={prior.k} but the repository has {len(experts.tasks)} experts; using all of them")
    expert = None
    if seen_task is not None:
        if seen_task not in experts.tasks:
            raise SGLoraError(f"sampling: seen task {seen_task!r} is not an expert of the repository")
        expert = experts.tasks.index(seen_task)
    trained_on = getattr(cvae, "trained_on", None)
    if trained_on and trained_on != experts.checksum:
        raise SGLoraError(f"{_source(cvae).parent / 'config.json'}: the CVAE was trained on a repository with checksum "
                          f"{trained_on[:12]}..., but {experts.path} has {experts.checksum[:12]}...; it was trained for "
                          "another repository")
    mu, var, p = task_condition(query, experts.embedding(prior.modality), experts.mu, experts.var, prior.k, prior.tau,
                                cvae.spec.condition, expert=expert)
    gen = torch.Generator().manual_seed(seed)
    vectors = cvae.sample(mu, var, n, generator=gen, temperature=temperature, embedding=query).numpy()
    check_decoded(vectors, cvae, experts)
    return vectors, p


def _source(cvae: CVAE) -> Path:
    return Path(getattr(cvae, "source", "the CVAE's model.safetensors"))


def check_decoded(vectors: np.ndarray, cvae: CVAE, experts: ExpertTable) -> None:
    """Refuse decoded LoRAs that no working CVAE gives: non-finite values, or a norm above
    ``experts.norm_bound``. Either means damaged weights, so the error names the CVAE's file."""
    bad = int(vectors.size - np.isfinite(vectors).sum())
    if bad:
        raise SGLoraError(f"{_source(cvae)}: the CVAE decoded {bad} non-finite (NaN/inf) value(s); its weights are "
                          "damaged")
    norm = float(np.linalg.norm(vectors.astype(np.float64), axis=1).max())
    if norm > experts.norm_bound:
        raise SGLoraError(f"{_source(cvae)}: the CVAE decoded a LoRA of norm {norm:.3g}, above {experts.norm_bound:.3g} "
                          f"({NORM_FACTOR:g}x the largest expert's norm in {experts.path}); its weights are damaged")


def describe_prior(p: Prior, experts: ExpertTable) -> list[dict]:
    return [{"task": experts.tasks[i], "name": experts.names[i], "similarity": float(s), "alpha": float(a)}
            for i, s, a in zip(p.experts, p.similarity, p.alpha)]


#: what ``generate`` writes into ``--out`` besides the adapters: the record of that one call,
#: ``files`` listing every file it wrote (relative to ``--out``)
MANIFEST = "generate.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: files that make a folder a model (a backbone, a CVAE, a repository): never written into
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "experts.parquet", "snapshots.parquet")
_SAMPLE = re.compile(r"sample_\d{3,}")


def check_out(out: str | Path, overwrite: bool = False) -> set[str]:
    """Refuse an ``--out`` that would lose data: an existing file, a folder holding a model,
    or a non-empty folder unless ``overwrite``. Returns the files an earlier ``generate``
    recorded writing there (its :data:`MANIFEST`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SGLoraError(f"--out {out}: is an existing file; give a new or empty folder")
    if not out.is_dir():
        return set()
    model = [name for name in MODEL_FILES if (out / name).exists()]
    if model:
        raise SGLoraError(f"--out {out}: holds a model ({model[0]}); generate writes adapters, never into a model's "
                          "folder; give a new or empty folder")
    if any(out.iterdir()) and not overwrite:
        raise SGLoraError(f"--out {out}: folder exists and is not empty; give a new or empty folder, or --overwrite "
                          "to replace only the adapter files this command writes")
    if not (out / MANIFEST).exists():
        return set()
    record = read_json(out / MANIFEST)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise SGLoraError(f"{out / MANIFEST}: expected a JSON object whose 'files' is a list of file names; "
                          "move the file away to write here")
    for f in files:
        inside(out, f)
    return set(files)


def _files(folder: Path, root: Path | None = None) -> list[str]:
    """Every file under ``folder``, as a path relative to ``root`` (default: ``folder``)."""
    return sorted(f.relative_to(root or folder).as_posix() for f in folder.rglob("*") if not f.is_dir())


def _leftovers(out: Path, new: set[str], old: set[str]) -> list[str]:
    """Entries of ``out`` an earlier ``generate`` wrote that this call does not (a sample
    beyond the new count, a single adapter's files), as files to remove; one that holds a
    file no ``generate`` recorded writing is refused, naming it."""
    stale = []
    for entry in sorted(out.iterdir()):
        if entry.name in new or any(f.startswith(entry.name + "/") for f in new):
            continue
        if entry.is_dir() and _SAMPLE.fullmatch(entry.name):
            files = _files(entry, out)
        elif entry.name in ADAPTER_FILES:
            files = [entry.name]
        else:
            continue  # not an adapter's: not ours to touch
        foreign = [f for f in files if f not in old]
        if foreign:
            raise SGLoraError(f"--out {out}: {foreign[0]} is not in {MANIFEST} (no 'sglora generate' recorded writing "
                              "it) and would stay beside this call's adapters; move it away or give another --out")
        stale += files
    return stale


def _install(staging: Path, out: Path, old: set[str]) -> None:
    """Make ``out`` the product of this call: move each file of ``staging`` into ``out``
    (replacing one of the same name; other files of a sample folder stay), then remove what
    an earlier call wrote and this one does not. Conflicts are found before anything moves;
    the manifest lists every file of ours on disk at each step."""
    files = _files(staging)
    for f in files:
        parts = Path(f).parts
        for i in range(1, len(parts) + 1):
            target, folder = out.joinpath(*parts[:i]), i < len(parts)
            if target.exists() and target.is_dir() != folder:
                kind = "folder" if target.is_dir() else "file"
                raise SGLoraError(f"--out {out}: {Path(*parts[:i])} exists there as a {kind}; not replacing it")
    new = set(files)
    stale = _leftovers(out, new, old)
    record = read_json(staging / MANIFEST)
    write_json(out / MANIFEST, record | {"files": sorted((new | old) - {MANIFEST})})
    for f in files:
        if f != MANIFEST:
            (out / f).parent.mkdir(exist_ok=True)
            os.replace(staging / f, out / f)
    for f in stale:
        (out / f).unlink(missing_ok=True)
    for folder in sorted({(out / f).parent for f in stale} - {out}):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    os.replace(staging / MANIFEST, out / MANIFEST)


def _staging(out: Path) -> Path:
    """A fresh temporary folder for the files of ``out``: inside it when it exists, else
    beside it (this is also where the command first finds whether it may write there)."""
    where = out if out.is_dir() else out.parent
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=where))
    except OSError as err:
        raise SGLoraError(f"--out {out}: cannot write there ({type(err).__name__}: {one_line(err)})") from err


def check_request(description: str, samples: int, seed: int) -> None:
    """Refuse arguments of ``generate`` that cannot give an adapter, naming each."""
    if not description.strip():
        raise SGLoraError("description is empty; describe the task, e.g. 'a photo of a zebra'")
    try:
        description.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SGLoraError(f"description: not valid UTF-8 text (byte {err.object[err.start:err.end]!r} at character "
                          f"{err.start}); expected text in UTF-8") from None
    if samples < 1:
        raise SGLoraError(f"--samples must be >= 1, got {samples}")
    if not 0 <= seed < 2**64:
        raise SGLoraError(f"--seed must be in [0, 2^64 - 1], got {seed}")


def generate(description: str, repository: str | Path, cvae_dir: str | Path, out: str | Path, samples: int = 1,
             seed: int = 0, backbone: str | None = None, prior: PriorSpec | None = None,
             overwrite: bool = False) -> dict:
    """Write ``samples`` adapter folders for a free-text task description.

    With one sample the adapter is ``out`` itself; with more, ``out/sample_000`` ... . A CVAE
    exported with ``sampling.average`` writes one adapter, the mean of the ``samples`` draws.
    ``out/generate.json`` records the call and the files it wrote. An existing non-empty
    ``out`` is refused unless ``overwrite``, and a model's folder always; nothing no
    ``generate`` wrote is ever removed. One writer at a time: a second is refused.
    """
    check_request(description, samples, seed)
    out = Path(out).resolve()
    with exclusive(out.parent / f".{out.name}.lock", f"--out {out}"):
        old = check_out(out, overwrite)
        staging = _staging(out)
        try:
            result = _generate(description, repository, cvae_dir, staging, samples, seed, backbone, prior)
            if out.exists():
                _install(staging, out, old)
            else:
                os.chmod(staging, 0o777 & ~umask())
                try:
                    staging.rename(out)
                except OSError as err:  # made meanwhile by a writer that takes no lock
                    raise SGLoraError(f"--out {out}: appeared while this command wrote ({one_line(err)}); "
                                      "nothing was written there") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    adapters = [out] if len(result["adapters"]) == 1 else [out / n for n in result["adapters"]]
    return {**result, "adapters": [str(d) for d in adapters]}


def _generate(description: str, repository: str | Path, cvae_dir: str | Path, staging: Path, samples: int,
              seed: int, backbone: str | None, prior: PriorSpec | None) -> dict:
    """Write the adapter(s) and :data:`MANIFEST` of :func:`generate` into the empty folder ``staging``."""
    from .backbone import encode_texts, load_clip
    from .cvae import load_cvae
    from .lora import save_adapter
    from .repository import Repository

    repo = Repository(repository)
    cvae, cfg = load_cvae(cvae_dir)
    if cvae.dim != repo.layout.dim:
        raise SGLoraError(f"{cvae_dir}: the CVAE generates LoRAs of {cvae.dim} values, but the repository "
                          f"{repository} holds LoRAs of {repo.layout.dim}; it was trained for another repository")
    with reading(Path(cvae_dir) / "config.json", "CVAE config"):  # what export-cvae chose on validation
        sampling = SamplingSpec.from_dict(cfg.get("sampling"))
    prior = prior or PriorSpec.from_dict(cfg.get("prior"))
    if prior.modality != "textual":
        raise SGLoraError("sglora generate needs the textual prior (a description has no images)")
    backbone = backbone or repo.backbone
    model, processor = load_clip(backbone)
    context = min(processor.tokenizer.model_max_length, 77)
    tokens = len(processor.tokenizer(description)["input_ids"])
    if tokens > context:
        log.warning(f"warning: the description has {tokens} tokens; the text encoder reads only the first {context}")
    query = encode_texts(model, processor, [description]).numpy()[0]
    experts = repo.experts()
    vectors, p = sample_loras(cvae, experts, query, prior, samples, seed, temperature=sampling.temperature)
    if sampling.average:  # chosen on validation: one adapter, the mean of the samples
        vectors, samples = vectors.astype(np.float64).mean(0, keepdims=True).astype(np.float32), 1
    used = describe_prior(p, experts)
    names = ["adapter"] if samples == 1 else [f"sample_{i:03d}" for i in range(samples)]
    for i, (name, v) in enumerate(zip(names, vectors)):
        save_adapter(staging / name, v, repo.layout, repo.lora, backbone,
                     {"description": description, "seed": seed, "sample": i, "experts": used, "kind": "sglora"})
    if samples == 1:  # the adapter files go straight into out
        inner = staging / "adapter"
        for entry in list(inner.iterdir()):
            entry.rename(staging / entry.name)
        inner.rmdir()
    files = _files(staging)
    write_json(staging / MANIFEST, {"description": description, "seed": seed, "samples": samples, "experts": used,
                                    "repository": str(Path(repository).resolve()),
                                    "cvae": str(Path(cvae_dir).resolve()), "files": files})
    return {"description": description, "experts": used, "adapters": names, "seed": seed}
