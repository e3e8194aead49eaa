"""What `sglora generate` writes: an output folder is the product of one call, one writer at
a time, never a model's folder, and bad arguments are one line before anything loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from sglora.generator.sampling import generate as generate_adapters
from sglora.io import SGLoraError
from sglora.experts.lora import read_adapter

from test_generate_command import generate, one_error_line, tiny_cvae  # noqa: F401 (a fixture)


def descriptions(out: Path) -> dict[str, str]:
    """The description each adapter under ``out`` was generated for, by folder."""
    return {d.relative_to(out).as_posix(): read_adapter(d)[1]["description"]
            for d in sorted({f.parent for f in out.rglob("adapter_model.safetensors")})}


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_overwrite_makes_the_folder_the_product_of_one_call(capsys, tiny_repo, tiny_cvae, tmp_path):
    out = tmp_path / "zoo"
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", out, "--samples", 3)
    assert rc == 0, err
    (out / "sample_000" / "eval.txt").write_text("R@1 12.0")  # the user's notes beside an adapter
    (out / "notes.txt").write_text("keep")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a lily", "--out", out, "--samples", 2,
                          "--overwrite")
    assert rc == 0, err
    assert descriptions(out) == {"sample_000": "a photo of a lily", "sample_001": "a photo of a lily"}
    assert not (out / "sample_002").exists()
    assert (out / "sample_000" / "eval.txt").read_text() == "R@1 12.0"
    assert (out / "notes.txt").read_text() == "keep"
    record = json.loads((out / "generate.json").read_text())
    assert record["description"] == "a photo of a lily" and record["samples"] == 2
    assert record["files"] == [f"sample_00{i}/{name}" for i in range(2)
                               for name in ("README.md", "adapter_config.json", "adapter_model.safetensors")]
    # back to one adapter: sample_000 would go, but it holds the user's file
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a dog", "--out", out, "--overwrite")
    assert rc == 2
    one_error_line(err, "sample_000/eval.txt", "move it away")
    assert descriptions(out) == {"sample_000": "a photo of a lily", "sample_001": "a photo of a lily"}
    (out / "sample_000" / "eval.txt").rename(tmp_path / "eval.txt")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a dog", "--out", out, "--overwrite")
    assert rc == 0, err
    assert descriptions(out) == {".": "a photo of a dog"}
    assert listing(out) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "generate.json",
                            "notes.txt"]


@pytest.mark.parametrize("recorded", [False, True])
def test_overwrite_refuses_a_sample_folder_holding_files_it_did_not_write(capsys, tiny_repo, tiny_cvae, tmp_path,
                                                                          recorded):
    out = tmp_path / "zoo"
    if recorded:  # an earlier call wrote sample_002, then the user put a file into it
        assert generate(capsys, tiny_repo, tiny_cvae, "a terrier", "--out", out, "--samples", 3)[0] == 0
        (out / "sample_002" / "eval.txt").write_text("mine")
        foreign = "sample_002/eval.txt"
    else:  # no record of who wrote sample_002
        (out / "sample_002").mkdir(parents=True)
        (out / "sample_002" / "adapter_model.safetensors").write_text("someone's adapter")
        foreign = "sample_002/adapter_model.safetensors"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a lily", "--out", out, "--samples", 2, "--overwrite")
    assert rc == 2
    one_error_line(err, out, foreign, "move it away")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_second_writer_is_refused_while_one_writes(capsys, tiny_repo, tiny_cvae, tmp_path):
    from sglora.io import exclusive

    out = tmp_path / "zoo"
    assert generate(capsys, tiny_repo, tiny_cvae, "a terrier", "--out", out, "--samples", 2)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with exclusive(tmp_path / ".zoo.lock", "the first writer"):  # the lock another `generate` holds while it writes
        rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a lily", "--out", out, "--samples", 3, "--overwrite")
    assert rc == 2
    one_error_line(err, out, "another process is writing it")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]  # the lock file goes with its holder


@pytest.mark.parametrize("existing", [False, True])
def test_concurrent_writers_leave_one_call_s_product(tiny_repo, tiny_cvae, tmp_path, existing):
    out = tmp_path / "zoo"
    if existing:
        generate_adapters("a dog", tiny_repo, tiny_cvae, out, samples=4)
    start, outcome = threading.Barrier(2), {}

    def write(description: str, samples: int) -> None:
        start.wait()
        try:
            generate_adapters(description, tiny_repo, tiny_cvae, out, samples=samples, overwrite=existing)
            outcome[description] = "wrote"
        except SGLoraError as err:
            outcome[description] = str(err)

    threads = [threading.Thread(target=write, args=a) for a in (("a terrier", 2), ("a lily", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "wrote" in outcome.values(), outcome
    refused = [m for m in outcome.values() if m != "wrote"]
    assert all("another process is writing it" in m or "not empty" in m for m in refused), outcome
    record = json.loads((out / "generate.json").read_text())
    assert set(descriptions(out).values()) == {record["description"]}
    assert len(descriptions(out)) == record["samples"]


@pytest.mark.parametrize("folder", ["backbone", "repository", "cvae"])
def test_a_model_folder_is_never_written_into(capsys, tiny_clip, tiny_repo, tiny_cvae, tmp_path, folder):
    model = tmp_path / folder
    shutil.copytree({"backbone": tiny_clip, "repository": tiny_repo, "cvae": tiny_cvae}[folder], model)
    before = listing(model)
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a terrier", "--out", model, "--overwrite")
    assert rc == 2
    one_error_line(err, model, "holds a model")
    assert listing(model) == before


class ReadOnly:
    """A folder nobody may write into: mode 0555, and as root (whom modes do not stop)
    immutable; the test is skipped where neither holds."""

    def __init__(self, folder: Path):
        self.folder, self.immutable = folder, False

    def __enter__(self) -> Path:
        self.folder.chmod(0o555)
        if not self._blocked() and shutil.which("chattr"):
            self.immutable = subprocess.run(["chattr", "+i", str(self.folder)], capture_output=True).returncode == 0
        if not self._blocked():
            self.__exit__()
            pytest.skip("cannot make a folder read-only here")
        return self.folder

    def _blocked(self) -> bool:
        try:
            (self.folder / ".probe").touch()
        except OSError:
            return True
        (self.folder / ".probe").unlink()
        return False

    def __exit__(self, *exc) -> None:
        if self.immutable:
            subprocess.run(["chattr", "-i", str(self.folder)], check=True)
        self.folder.chmod(0o755)


@pytest.mark.parametrize("where", ["read-only parent", "read-only out", "parent is a file"])
def test_an_unwritable_out_fails_before_anything_loads(capsys, tiny_repo, tmp_path, where):
    missing_cvae = tmp_path / "no_cvae"  # loading it would fail: the --out error must come first
    if where == "parent is a file":
        (tmp_path / "report.txt").write_text("x")
        out = tmp_path / "report.txt" / "adapter"
        rc, _, err = generate(capsys, tiny_repo, missing_cvae, "a terrier", "--out", out)
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        out = locked / "adapter" if where == "read-only parent" else locked
        with ReadOnly(locked):
            rc, _, err = generate(capsys, tiny_repo, missing_cvae, "a terrier", "--out", out)
        assert list(locked.iterdir()) == []
    assert rc == 2
    one_error_line(err, out, "cannot write there")
    assert str(missing_cvae) not in err


@pytest.mark.parametrize("args,message", [(("a \udcff dog",), "description: not valid UTF-8"),
                                          (("a dog", "--seed", str(2**64)), "--seed must be in [0, 2^64 - 1]"),
                                          (("a dog", "--seed", "-1"), "--seed must be in [0, 2^64 - 1]")])
def test_undecodable_description_and_out_of_range_seed(capsys, tiny_repo, tiny_cvae, tmp_path, args, message):
    # Python hands a command line's non-UTF-8 bytes over as lone surrogates ("\udcff" is byte 0xff)
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, *args, "--out", tmp_path / "a")
    assert rc == 2
    one_error_line(err, message)
    assert list(tmp_path.iterdir()) == []


def test_the_largest_seed_is_accepted(capsys, tiny_repo, tiny_cvae, tmp_path):
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a dog", "--out", tmp_path / "a", "--seed", str(2**64 - 1))
    assert rc == 0, err


def card(folder: Path) -> tuple[dict, str]:
    """The YAML front matter and the Markdown body of an adapter folder's model card."""
    import yaml

    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), text[:80]
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def table(body: str, heading: str) -> list[list[str]]:
    """The rows of the Markdown table under ``## heading`` (header and rule dropped)."""
    section = body.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row] for row in rows[2:]]


def test_every_adapter_folder_carries_a_model_card(capsys, tiny_repo, tiny_cvae, tmp_path):
    import hashlib

    from sglora.experts.repository import Repository

    out = tmp_path / "zoo"
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", out, "--samples", 2,
                          "--seed", 5)
    assert rc == 0, err
    record = json.loads((out / "generate.json").read_text())
    assert "sample_000/README.md" in record["files"] and "sample_001/README.md" in record["files"]
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest()
           for name, path in (("experts.parquet", tiny_repo / "experts.parquet"),
                              ("model.safetensors", tiny_cvae / "model.safetensors"))}
    for i in range(2):
        front, body = card(out / f"sample_00{i}")
        assert front["library_name"] == "peft"
        assert front["base_model"] == Repository(tiny_repo).backbone
        assert {"sglora", "lora", "clip"} <= set(front["tags"])
        assert "a photo of a terrier" in body and f"**Seed:** 5 (sample {i} of 2)" in body
        experts = table(body, "Experts used")
        assert [row[1] for row in experts] == [e["task"] for e in record["experts"]]
        assert [float(row[3]) for row in experts] == [round(e["alpha"], 4) for e in record["experts"]]
        assert sum(float(row[3]) for row in experts) == pytest.approx(1, abs=5e-4 * len(experts))
        assert {row[1]: row[2] for row in table(body, "Checksums")} == sha
    again = tmp_path / "again"
    assert generate(capsys, tiny_repo, tiny_cvae, "a photo of a terrier", "--out", again, "--samples", 2,
                    "--seed", 5)[0] == 0
    assert (again / "sample_001" / "README.md").read_bytes() == (out / "sample_001" / "README.md").read_bytes()


def test_overwrite_replaces_a_card_it_wrote_and_never_one_it_did_not(capsys, tiny_repo, tiny_cvae, tmp_path):
    out = tmp_path / "zoo"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "a photo of a lily", "--out", out, "--overwrite")
    assert rc == 2
    one_error_line(err, out, "README.md is not in generate.json")
    assert listing(out) == ["README.md"] and (out / "README.md").read_text() == "my notes"
    (out / "README.md").unlink()
    assert generate(capsys, tiny_repo, tiny_cvae, "a photo of a lily", "--out", out, "--overwrite")[0] == 0
    assert "a photo of a lily" in card(out)[1]
    assert generate(capsys, tiny_repo, tiny_cvae, "a photo of a dog", "--out", out, "--overwrite")[0] == 0
    assert "a photo of a dog" in card(out)[1] and "a photo of a lily" not in card(out)[1]
    assert generate(capsys, tiny_repo, tiny_cvae, "a photo of a dog", "--out", out, "--overwrite",
                    "--samples", 2)[0] == 0
    assert listing(out) == ["generate.json"] + [f"sample_00{i}{name}" for i in range(2)
                                                for name in ("", "/README.md", "/adapter_config.json",
                                                             "/adapter_model.safetensors")]


def test_overwrite_of_a_descriptions_call_removes_the_folders_it_no_longer_writes(capsys, tiny_repo, tiny_cvae,
                                                                                   tmp_path):
    out, tasks = tmp_path / "zoo", tmp_path / "tasks.txt"
    tasks.write_text("a terrier\na lily\n")
    assert generate(capsys, tiny_repo, tiny_cvae, "--descriptions", tasks, "--out", out, "--samples", 2)[0] == 0
    (out / "a_terrier" / "eval.txt").write_text("R@1 12.0")
    tasks.write_text("a terrier\na dog\n")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "--descriptions", tasks, "--out", out, "--overwrite")
    assert rc == 0, err
    assert descriptions(out) == {"a_dog": "a dog", "a_terrier": "a terrier"}
    assert (out / "a_terrier" / "eval.txt").read_text() == "R@1 12.0"
    assert sorted(p.name for p in out.iterdir()) == ["a_dog", "a_terrier", "generate.json"]
    assert sorted(p.name for p in (out / "a_terrier").iterdir()) == ["README.md", "adapter_config.json",
                                                                     "adapter_model.safetensors", "eval.txt"]
    (out / "a_dog" / "eval.txt").write_text("mine")
    tasks.write_text("a terrier\n")
    rc, _, err = generate(capsys, tiny_repo, tiny_cvae, "--descriptions", tasks, "--out", out, "--overwrite")
    assert rc == 2
    one_error_line(err, "a_dog/eval.txt", "move it away")
    assert descriptions(out) == {"a_dog": "a dog", "a_terrier": "a terrier"}
