"""LoRA generation for unseen tasks (Eq. 9): d* -> c* = (mu*, var*) -> z ~ p(z | c*) -> X.

``sample_loras`` is the library call; ``generate`` is what ``sglora generate`` runs for
any text description, ``generate_many`` for a file of them (models loaded once). Each
adapter folder carries a model card (``README.md``, :func:`model_card`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .cvae import CVAE
from ..io import (SGLoraError, exclusive, file_sha256, inside, one_line, read_json, reading, slugify, umask,
                 write_json)
from .prior import Prior, task_condition
from .settings import PriorSpec, SamplingSpec
from ..experts.repository import NORM_FACTOR, ExpertTable

if TYPE_CHECKING:
    from ..experts.lora import Layout, LoraSpec

log = logging.getLogger("sglora")


def task_seed(seed: int, task: str) -> int:
    """A per-task seed, stable across runs and independent of which other tasks run."""
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
    """The experts a prior draws on, with their similarity and weight alpha."""
    return [{"task": experts.tasks[i], "name": experts.names[i], "similarity": float(s), "alpha": float(a)}
            for i, s, a in zip(p.experts, p.similarity, p.alpha)]


#: where a finished run keeps what ``generate`` needs, relative to its results folder
#: (the workflow's ``results``): the expert repository (rule ``assemble``) and the CVAE
#: chosen on validation (rule ``export_cvae``)
RUN_LAYOUT = {"repository": ("repository", "experts.parquet", "assemble"),
              "cvae": ("cvae/selected", "model.safetensors", "export_cvae")}


def run_paths(results: str | Path) -> tuple[Path, Path]:
    """The expert repository and the chosen CVAE of the finished run whose results folder
    is ``results``; an error names the folder and the piece it lacks."""
    results = Path(results)
    if not results.is_dir():
        raise SGLoraError(f"--results {results}: not a folder; expected a run's results folder (holding "
                          f"{' and '.join(folder + '/' for folder, _, _ in RUN_LAYOUT.values())})")
    paths = []
    for what, (folder, file, rule) in RUN_LAYOUT.items():
        if not (results / folder / file).is_file():
            raise SGLoraError(f"--results {results}: {folder}/{file} is missing (the {what}, written by rule {rule}); "
                              "not a finished run: finish it, or give --repository and --cvae")
        paths.append(results / folder)
    return paths[0], paths[1]


def model_paths(results: Path | None, repository: Path | None, cvae: Path | None) -> tuple[Path, Path]:
    """The repository and CVAE ``generate`` uses: a run's (``--results``) or the two given."""
    if results is not None and (repository is not None or cvae is not None):
        raise SGLoraError("give --results DIR or --repository and --cvae, not both")
    if results is not None:
        return run_paths(results)
    if repository is None or cvae is None:
        given = "--repository without --cvae" if repository else "--cvae without --repository" if cvae else "neither"
        raise SGLoraError(f"which SG-LoRA to use: give --results DIR (a finished run's results folder) or both "
                          f"--repository and --cvae ({given} given)")
    return Path(repository), Path(cvae)


def read_descriptions(path: str | Path) -> list[str]:
    """The descriptions of a ``--descriptions`` file: one per line, UTF-8, blank lines and
    lines starting with ``#`` skipped. An error names the file and the line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SGLoraError(f"--descriptions {path}: cannot read it ({type(err).__name__}: {one_line(err)})") from err
    found, lines = [], {}
    for n, line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise SGLoraError(f"{path} line {n}: not valid UTF-8 (byte {line[err.start:err.start + 1]!r} at byte "
                              f"{err.start}); expected one description per line in UTF-8") from None
        if not text or text.startswith("#"):
            continue
        folder = adapter_folder(text)
        if folder in lines:
            same = "repeats" if found[lines[folder][1]] == text else "gives the same folder name as"
            raise SGLoraError(f"{path} line {n}: {same} line {lines[folder][0]} ({folder!r}); each description "
                              "needs its own folder: remove or reword one")
        lines[folder] = (n, len(found))
        found.append(text)
    if not found:
        raise SGLoraError(f"{path}: holds no description; expected one per line (blank lines and # comments are "
                          "skipped)")
    return found


def adapter_folder(description: str) -> str:
    """The folder ``--descriptions`` writes a description's adapter(s) into, under ``--out``:
    its slug (:func:`sglora.io.slugify`, e.g. ``"A photo of a Zebra!"`` -> ``a_photo_of_a_zebra``);
    a slug of more than 60 characters is cut to 51 and ends in ``_`` and 8 hex digits of the
    description's SHA-256, and a description without a latin letter or digit is
    ``description_`` and 12 of them."""
    digest = hashlib.sha256(description.encode()).hexdigest()
    try:
        slug = slugify(description)
    except SGLoraError:
        return f"description_{digest[:12]}"
    return slug if len(slug) <= 60 else f"{slug[:51].rstrip('_')}_{digest[:8]}"


#: what ``generate`` writes into ``--out`` besides the adapters: the record of that one call,
#: ``files`` listing every file it wrote (relative to ``--out``)
MANIFEST = "generate.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: files that make a folder a model (a backbone, a CVAE, a repository): never written into
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "experts.parquet", "snapshots.parquet")
_SAMPLE = re.compile(r"sample_\d{3,}")


def check_not_model(folder: Path, where: str) -> None:
    """Refuse to write adapters into a folder that holds a model."""
    model = [name for name in MODEL_FILES if (folder / name).exists()]
    if model:
        raise SGLoraError(f"{where}: holds a model ({model[0]}); generate writes adapters, never into a model's "
                          "folder; give a new or empty folder")


def check_out(out: str | Path, overwrite: bool = False) -> set[str]:
    """Refuse an ``--out`` that would lose data: an existing file, a folder holding a model,
    or a non-empty folder unless ``overwrite``. Returns the files an earlier ``generate``
    recorded writing there (its :data:`MANIFEST`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SGLoraError(f"--out {out}: is an existing file; give a new or empty folder")
    if not out.is_dir():
        return set()
    check_not_model(out, f"--out {out}")
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
    """The files an earlier ``generate`` wrote into ``out`` that this call does not (a sample
    beyond the new count, a single adapter's files, a description no longer given), to
    remove. Refused, naming the file: a folder of those that holds a file no ``generate``
    recorded writing, and an unrecorded adapter file or sample folder in ``out`` (it would
    stay beside this call's adapters)."""
    stale = sorted(f for f in old - new if (out / f).is_file())
    for folder in sorted({folder for f in stale for folder in Path(f).parents[:-1]}):
        if any(Path(f).is_relative_to(folder) for f in new):
            continue  # this call writes into it: what else is there stays, as in out itself
        foreign = [f for f in _files(out / folder, out) if f not in old]
        if foreign:
            _refuse_foreign(out, foreign[0])
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
            _refuse_foreign(out, foreign[0])
    return stale


def _refuse_foreign(out: Path, file: str) -> None:
    raise SGLoraError(f"--out {out}: {file} is not in {MANIFEST} (no 'sglora generate' recorded writing it) and "
                      "would stay beside this call's adapters; move it away or give another --out")


def _install(staging: Path, out: Path, old: set[str]) -> None:
    """Make ``out`` the product of this call: move each file of ``staging`` into ``out``
    (replacing one an earlier call recorded; other files of a folder stay), then remove what
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
            if folder and target.is_dir():
                check_not_model(target, f"--out {out}: {Path(*parts[:i])}")
        if f != MANIFEST and (out / f).exists() and f not in old:
            raise SGLoraError(f"--out {out}: {f} is not in {MANIFEST} (no 'sglora generate' recorded writing it); "
                              "not replacing it: move it away or give another --out")
    new = set(files)
    stale = _leftovers(out, new, old)
    record = read_json(staging / MANIFEST)
    write_json(out / MANIFEST, record | {"files": sorted((new | old) - {MANIFEST})})
    for f in files:
        if f != MANIFEST:
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f, out / f)
    for f in stale:
        (out / f).unlink(missing_ok=True)
    for f in stale:  # folders left empty, innermost first
        for folder in Path(f).parents[:-1]:
            if (out / folder).is_dir() and not any((out / folder).iterdir()):
                (out / folder).rmdir()
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
    Each adapter folder holds its model card, ``README.md``. ``out/generate.json`` records
    the call and the files it wrote. An existing non-empty ``out`` is refused unless
    ``overwrite``, and a model's folder always; nothing no ``generate`` wrote is ever
    replaced or removed. One writer at a time: a second is refused.
    """
    check_request(description, samples, seed)

    def write(staging: Path) -> dict:
        sglora = SGLora.load(repository, cvae_dir, backbone, prior)
        result = sglora.write(description, staging, samples, seed)
        sglora.record(staging, {"description": description, "seed": seed, "samples": result["samples"],
                                "experts": result["experts"]})
        return result

    out = Path(out).resolve()
    result = _into(out, overwrite, write)
    return _located(result, out)


def generate_many(descriptions: list[str], repository: str | Path, cvae_dir: str | Path, out: str | Path,
                  samples: int = 1, seed: int = 0, backbone: str | None = None, prior: PriorSpec | None = None,
                  overwrite: bool = False) -> list[dict]:
    """:func:`generate` for each description, into ``out/<adapter_folder(description)>``, with
    the models loaded once. Every description is sampled with the same ``seed``, so its
    adapters are the bytes a separate :func:`generate` call writes, whichever other
    descriptions are given. ``out/generate.json`` records the whole call."""
    if not descriptions:
        raise SGLoraError("descriptions: none given; give at least one")
    for d in descriptions:
        check_request(d, samples, seed)
    folders = [adapter_folder(d) for d in descriptions]
    if len(set(folders)) < len(folders):
        raise SGLoraError("descriptions: two give the same folder name; give each description once")

    def write(staging: Path) -> list[dict]:
        sglora = SGLora.load(repository, cvae_dir, backbone, prior)
        results = [sglora.write(d, staging / f, samples, seed) | {"folder": f} for d, f in zip(descriptions, folders)]
        sglora.record(staging, {"descriptions": [{k: r[k] for k in ("description", "folder", "experts")}
                                                 for r in results],
                                "seed": seed, "samples": results[0]["samples"]})
        return results

    out = Path(out).resolve()
    return [_located(r, out / r["folder"]) for r in _into(out, overwrite, write)]


def _located(result: dict, folder: Path) -> dict:
    """``result`` with its adapters named by their final paths under ``folder``."""
    names = result["adapters"]
    return {**result, "adapters": [str(folder)] if names == ["."] else [str(folder / n) for n in names]}


def _into(out: Path, overwrite: bool, write):
    """Run ``write(staging)`` on an empty temporary folder and make ``out`` its product: a new
    folder, or (``overwrite``) an existing one of earlier ``generate`` calls, under its lock."""
    with exclusive(out.parent / f".{out.name}.lock", f"--out {out}"):
        old = check_out(out, overwrite)
        staging = _staging(out)
        try:
            result = write(staging)
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
    return result


#: the model card of every adapter folder (Hugging Face format: YAML front matter, Markdown)
CARD = "README.md"
CARD_TAGS = ("sglora", "lora", "clip")


@dataclass
class SGLora:
    """A trained SG-LoRA loaded for generation: the repository, the CVAE with the sampling
    settings chosen on validation, and the backbone's text encoder."""

    repository: Path
    cvae_dir: Path
    backbone: str
    lora: LoraSpec
    layout: Layout
    experts: ExpertTable
    cvae: CVAE
    sampling: SamplingSpec
    prior: PriorSpec
    model: torch.nn.Module  #: the backbone (its text encoder embeds the descriptions)
    processor: object
    checksums: dict[str, str]  #: sha256 of the expert table and of the CVAE's weights

    @classmethod
    def load(cls, repository: str | Path, cvae_dir: str | Path, backbone: str | None = None,
             prior: PriorSpec | None = None) -> "SGLora":
        """Load a repository, its backbone and a trained CVAE for generating LoRAs."""
        from ..backbone.clip import load_clip
        from .cvae import load_cvae
        from ..experts.repository import Repository

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
        checksums = {"experts.parquet": file_sha256(repo.path / "experts.parquet", "the expert table"),
                     "model.safetensors": file_sha256(cvae.source, "the CVAE's weights")}
        return cls(Path(repository), Path(cvae_dir), backbone, repo.lora, repo.layout, repo.experts(), cvae,
                   sampling, prior, model, processor, checksums)

    def write(self, description: str, folder: Path, samples: int, seed: int) -> dict:
        """Write the adapter(s) of one description into ``folder`` (new or empty): with one
        sample the adapter is ``folder`` itself, else ``folder/sample_NNN``; each with its card."""
        from ..backbone.clip import encode_texts
        from ..experts.lora import save_adapter

        context = min(self.processor.tokenizer.model_max_length, 77)
        tokens = len(self.processor.tokenizer(description)["input_ids"])
        if tokens > context:
            log.warning(f"warning: the description has {tokens} tokens; the text encoder reads only the first "
                        f"{context}")
        query = encode_texts(self.model, self.processor, [description]).numpy()[0]
        vectors, p = sample_loras(self.cvae, self.experts, query, self.prior, samples, seed,
                                  temperature=self.sampling.temperature)
        drawn = samples
        if self.sampling.average:  # chosen on validation: one adapter, the mean of the samples
            vectors, samples = vectors.astype(np.float64).mean(0, keepdims=True).astype(np.float32), 1
        used = describe_prior(p, self.experts)
        names = ["."] if samples == 1 else [f"sample_{i:03d}" for i in range(samples)]
        folder.mkdir(exist_ok=True)
        for i, (name, v) in enumerate(zip(names, vectors)):
            where = folder / (name if samples > 1 else "adapter")
            save_adapter(where, v, self.layout, self.lora, self.backbone,
                         {"description": description, "seed": seed, "sample": i, "experts": used, "kind": "sglora"})
            (where / CARD).write_text(self.card(description, used, seed, i, samples, drawn), encoding="utf-8")
        if samples == 1:  # the adapter files go straight into folder
            for entry in list((folder / "adapter").iterdir()):
                entry.rename(folder / entry.name)
            (folder / "adapter").rmdir()
        return {"description": description, "experts": used, "adapters": names, "seed": seed, "samples": samples}

    def record(self, staging: Path, call: dict) -> None:
        """Write :data:`MANIFEST`: ``call``, the models used and every file in ``staging``."""
        write_json(staging / MANIFEST, {**call, "repository": str(self.repository.resolve()),
                                        "cvae": str(self.cvae_dir.resolve()), "files": _files(staging)})

    def card(self, description: str, experts: list[dict], seed: int, sample: int, samples: int, drawn: int) -> str:
        """The model card (:data:`CARD`) of one adapter of ``description``, in the Hugging Face
        format: YAML front matter (``library_name``, ``base_model``, ``tags``), then what it
        was made from: the experts used and their weights, the seed, the sample, and the
        checksums of the repository's expert table and of the CVAE. Same inputs, same bytes."""
        import json

        backbone, checksums = self.backbone, self.checksums
        one_line_text = " ".join(description.split())
        drawn_text = f"; the mean of {drawn} decoded samples" if drawn > samples else f" (sample {sample} of {samples})"
        rows = [f"| {e['name'].replace('|', '/')} | `{e['task']}` | {e['similarity']:.4f} | {e['alpha']:.4f} |"
                for e in experts]
        sums = [f"| {what} | `{name}` | `{checksums[name]}` |" for what, name in
                (("expert repository (its expert table)", "experts.parquet"), ("CVAE weights", "model.safetensors"))]
        return "\n".join([
            "---",
            "library_name: peft",
            f"base_model: {json.dumps(backbone, ensure_ascii=False)}",
            "tags:", *[f"- {t}" for t in CARD_TAGS],
            "---",
            "",
            f"# SG-LoRA adapter: {one_line_text}",
            "",
            "A LoRA for the CLIP backbone below, generated without training data by SG-LoRA (`sglora generate`): "
            "the expert LoRAs whose task descriptions are nearest to this one (the semantic prior) condition a CVAE, "
            "which decodes this adapter.",
            "",
            f"- **Description:** {one_line_text}",
            f"- **Backbone:** `{backbone}`",
            f"- **Seed:** {seed}{drawn_text}, latent temperature {self.sampling.temperature:g}",
            "",
            "## Experts used",
            "",
            f"The semantic prior's top-K experts (K = {len(experts)}, τ = {self.prior.tau:g}): the cosine similarity "
            "of their descriptions' embeddings to this one's, and their weights α (softmax of similarity / τ over the "
            "top K, summing to 1).",
            "",
            "| expert | task | similarity | α |",
            "|---|---|---:|---:|",
            *rows,
            "",
            "## Checksums",
            "",
            "| model | file | sha256 |",
            "|---|---|---|",
            *sums,
            "",
            "## Usage",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import CLIPModel",
            "",
            f"model = PeftModel.from_pretrained(CLIPModel.from_pretrained({json.dumps(backbone, ensure_ascii=False)}), "
            "\"path/to/this/folder\")",
            "```",
            "",
        ])
