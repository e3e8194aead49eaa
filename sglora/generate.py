"""LoRA generation for unseen tasks (Eq. 9): d* -> c* = (mu*, var*) -> z ~ p(z | c*) -> X.

``sample_loras`` is the library call; ``generate`` is what ``sglora generate`` runs for
any text description.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .cvae import CVAE
from .io import SGLoraError, Settings, reading, setting, umask
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


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an ``--out`` that would lose data: an existing file, or a non-empty folder
    unless ``overwrite`` (then only the entries ``generate`` writes are replaced)."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise SGLoraError(f"--out {out}: is an existing file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SGLoraError(f"--out {out}: folder exists and is not empty; give a new or empty folder, or --overwrite "
                          "to replace only the adapter files this command writes")
    return out


def _install(staging: Path, out: Path) -> None:
    """Move each entry of ``staging`` into ``out``, replacing only entries of the same name
    and kind (a conflict is found before anything moves)."""
    entries = sorted(staging.iterdir())
    for entry in entries:
        target = out / entry.name
        if target.exists() and entry.is_dir() != target.is_dir():
            kind = "folder" if target.is_dir() else "file"
            raise SGLoraError(f"--out {out}: {entry.name} exists there as a {kind}; not replacing it")
    for entry in entries:
        target = out / entry.name
        if entry.is_dir() and target.is_dir():
            old = out / f".{entry.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            entry.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, target)


def generate(description: str, repository: str | Path, cvae_dir: str | Path, out: str | Path, samples: int = 1,
             seed: int = 0, backbone: str | None = None, prior: PriorSpec | None = None,
             overwrite: bool = False) -> dict:
    """Write ``samples`` adapter folders for a free-text task description.

    With one sample the adapter is ``out`` itself; with more, ``out/sample_000`` ... . A CVAE
    exported with ``sampling.average`` writes one adapter, the mean of the ``samples`` draws.
    An existing non-empty ``out`` is refused unless ``overwrite``; nothing the command
    did not write is ever removed.
    """
    from .backbone import encode_texts, load_clip
    from .cvae import load_cvae
    from .lora import save_adapter
    from .repository import Repository

    if not description.strip():
        raise SGLoraError("description is empty; describe the task, e.g. 'a photo of a zebra'")
    if samples < 1:
        raise SGLoraError(f"--samples must be >= 1, got {samples}")
    out = check_out(out, overwrite)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = not out.exists()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent if fresh else out))
    try:
        for i, (name, v) in enumerate(zip(names, vectors)):
            save_adapter(staging / name, v, repo.layout, repo.lora, backbone,
                         {"description": description, "seed": seed, "sample": i, "experts": used, "kind": "sglora"})
        if samples == 1:  # the adapter files go straight into out
            inner = staging / "adapter"
            for entry in list(inner.iterdir()):
                entry.rename(staging / entry.name)
            inner.rmdir()
        if fresh:
            os.chmod(staging, 0o777 & ~umask())
            staging.rename(out)
        else:
            _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    dirs = [out] if samples == 1 else [out / n for n in names]
    return {"description": description, "experts": used, "adapters": [str(d) for d in dirs], "seed": seed}
