"""Hybrid classes of the embedded world ("<prefix> <A> <B>": family A's colour and texture
looks, family B's background look and shape), on the look tables and on rendered pixels;
and the default config's `between` group that evaluates them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from sglora.io import SGLoraError
from sglora.data.world import (ALL_BACKGROUND_TONES, ALL_BACKGROUNDS, ALL_TEXTURES, COLOURS, PALETTE, class_look,
                          family_looks, family_of, generate_world, hybrid_parts, world_families)

#: A = terrier (colour, texture), B = lily (background, shape; the member "fire" bends it), and the other way round
HYBRID, MIRROR = "fire terrier lily", "fox lily terrier"


def test_a_hybrid_takes_colour_and_texture_from_a_and_background_and_shape_from_b():
    looks = family_looks(0)
    look, shape, variant = class_look(HYBRID, 0)
    assert hybrid_parts(HYBRID) == ("terrier", "lily", 4) and family_of(HYBRID) == "lily"
    assert (look.colour, look.texture) == (looks["terrier"].colour, looks["terrier"].texture)
    assert look.background == looks["lily"].background
    assert (shape, variant) == (world_families()["lily"][0], world_families()["lily"][1].index("fire"))
    mirror, mirror_shape, _ = class_look(MIRROR, 0)
    assert (mirror.colour, mirror.background, mirror_shape) == (looks["lily"].colour, looks["terrier"].background,
                                                                 "box")
    assert look.colour != mirror.colour and look.background != mirror.background
    # a family's member keeps its family's look and shape
    assert class_look("fire lily", 0) == (looks["lily"], "star", 4)


def _object_stats(path: Path, bg_tone: tuple) -> tuple[int, float]:
    """The palette index most of an image's object pixels are nearest to (the fill colour or
    its dark texture shade), and the share of them in the dark shade."""
    arr = np.asarray(Image.open(path).convert("RGB"), np.float32).reshape(-1, 3)
    obj = arr[np.linalg.norm(arr - np.array(bg_tone, np.float32), axis=1) > 60]
    base = np.array(PALETTE, np.float32)
    refs = np.concatenate([base, 0.35 * base])  # plain fill, then the texture's dark shade
    nearest = np.linalg.norm(obj[:, None] - refs[None], axis=2).argmin(1)
    colour = int(np.bincount(nearest % len(PALETTE), minlength=len(PALETTE)).argmax())
    return colour, float((nearest >= len(PALETTE)).mean())


def _background(path: Path) -> int:
    """The background tone (index into ALL_BACKGROUND_TONES) nearest to the image's corners."""
    arr = np.asarray(Image.open(path).convert("RGB"), np.float32)
    corners = np.stack([arr[0, 0], arr[0, -1], arr[-1, 0], arr[-1, -1]]).mean(0)
    return int(np.linalg.norm(np.array(ALL_BACKGROUND_TONES, np.float32) - corners, axis=1).argmin())


def test_rendered_hybrids_carry_a_colour_and_texture_and_b_background(tmp_path):
    """On the pixels: a hybrid's object colour is A's rendering of its colour word, its
    texture A's (a plain fill in A's look has no dark shade), its background B's rendering of
    its background word; the mirrored hybrid (A and B swapped) matches the other way round,
    and neither matches the other's looks."""
    generate_world(tmp_path, [HYBRID, MIRROR], images_per_class=40, test_per_class=5, image_size=48, progress=False)
    looks = family_looks(0)
    rows = pq.read_table(tmp_path / "captions.parquet").to_pylist()
    for name, (a, b) in ((HYBRID, ("terrier", "lily")), (MIRROR, ("lily", "terrier"))):
        mine = [r for r in rows if r["class_name"] == name]
        assert len(mine) == 40 and {r["family"] for r in mine} == {b}
        hits = {"colour": 0, "colour_swapped": 0, "background": 0, "background_swapped": 0}
        dark_plain, dark_textured = [], []
        for r in mine:
            bg_index = ALL_BACKGROUNDS.index(r["background"])
            tone = ALL_BACKGROUND_TONES[looks[b].background[bg_index]]
            colour, dark = _object_stats(Path(r["image_path"]), tone)
            background = _background(Path(r["image_path"]))
            c = COLOURS.index(r["colour"])
            hits["colour"] += colour == looks[a].colour[c]
            hits["colour_swapped"] += colour == looks[b].colour[c]
            hits["background"] += background == looks[b].background[bg_index]
            hits["background_swapped"] += background == looks[a].background[bg_index]
            plain = looks[a].texture[ALL_TEXTURES.index(r["texture"])] == 0
            (dark_plain if plain else dark_textured).append(dark)
        assert hits["colour"] >= 36 and hits["background"] == 40, (name, hits)
        assert hits["colour_swapped"] <= 4 and hits["background_swapped"] <= 25, (name, hits)
        assert dark_plain and dark_textured, name
        assert np.mean(dark_plain) < 0.05 and np.mean(dark_textured) > 0.2, (name, dark_plain, dark_textured)


def test_hybrids_are_deterministic_and_leave_other_classes_unchanged(tmp_path):
    """The same seed gives the same hybrid images; adding a hybrid changes no other class's
    files; its captions and description name both families."""
    generate_world(tmp_path / "a", ["tiger lily", HYBRID], images_per_class=4, test_per_class=1, image_size=32,
                   progress=False)
    generate_world(tmp_path / "b", [HYBRID], images_per_class=4, test_per_class=1, image_size=32, progress=False)
    generate_world(tmp_path / "c", ["tiger lily"], images_per_class=4, test_per_class=1, image_size=32, progress=False)
    for task, other in (("fire_terrier_lily", "b"), ("tiger_lily", "c")):
        pngs = sorted((tmp_path / "a" / "images" / task).glob("*.png"))
        assert len(pngs) == 4
        for p in pngs:
            assert p.read_bytes() == (tmp_path / other / "images" / task / p.name).read_bytes()
    man = pq.read_table(tmp_path / "b" / "manifest.raw.parquet").to_pylist()
    assert {r["description"] for r in man} == {"a photo of a fire terrier lily"}
    caps = pq.read_table(tmp_path / "b" / "captions.parquet").to_pylist()
    assert all(HYBRID in c for r in caps for c in r["captions"])


@pytest.mark.parametrize("name, message", [
    ("fire lily lily", "names the family 'lily' twice"),
    ("fire zebra lily", "'zebra' is not a family of the world"),
    ("fire terrier zebra", "'zebra' is not a family of the world"),
    ("scottish terrier lily", "'scottish' is not a member of family 'lily'"),
])
def test_bad_hybrids_are_errors_naming_the_option(tmp_path, name, message):
    with pytest.raises(SGLoraError, match="embedded world option classes: hybrid") as err:
        generate_world(tmp_path, [name], images_per_class=2, test_per_class=1, progress=False)
    assert message in str(err.value) and not (tmp_path / "manifest.raw.parquet").exists()


def test_a_hybrid_of_a_family_beyond_the_world_size_is_an_error(tmp_path):
    made_up = list(world_families(8, 6))[7]
    with pytest.raises(SGLoraError, match=f"'{made_up}' is not a family of the world"):
        generate_world(tmp_path, [f"fire {made_up} lily"], images_per_class=2, test_per_class=1, progress=False)


def test_pretraining_never_sees_a_hybrid(tmp_path):
    """The backbone's pretraining pairs leave hybrids out: a world with hybrids gives the
    same pairs (images, captions, tokenizer texts, what each caption says) as the world
    without them, so adding the between group changes no backbone and no other result."""
    from sglora.data.world import pretraining_pairs

    kw = dict(images_per_class=30, test_per_class=5, image_size=32, progress=False)
    generate_world(tmp_path / "with", ["tiger lily", HYBRID, "fox terrier", MIRROR], **kw)
    generate_world(tmp_path / "without", ["tiger lily", "fox terrier"], **kw)
    with_, without = pretraining_pairs([tmp_path / "with"]), pretraining_pairs([tmp_path / "without"])
    assert len(without.images) == 2 * 25
    assert [p.replace("/with/", "/without/") for p in with_.images] == without.images
    assert (with_.texts, with_.vocab) == (without.texts, without.vocab)
    assert np.array_equal(with_.said, without.said) and np.array_equal(with_.truth, without.truth)
    assert not any(HYBRID in t or MIRROR in t for t in with_.vocab)


# --- the default config's between group ----------------------------------------------------------

BIN = Path(sys.executable).parent


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def dry_run(cfg: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--configfile", str(path)], cwd=ROOT,
                          capture_output=True, text=True)


def test_the_between_group_is_hybrids_of_two_families_disjoint_from_every_other_task():
    """Its tasks and its own validation tasks are hybrids of the default world's classes, each of
    two different families, in no other list of the config; it has every in-dataset row."""
    cfg = default_config()
    between, world = cfg["groups"]["between"], cfg["datasets"]["world"]["options"]
    own = between["validation"]
    assert between["dataset"] == own["dataset"] == "world" and 4 <= len(between["tasks"]) <= 6 and own["tasks"]
    assert between["methods"] == cfg["groups"]["in_dataset"]["methods"]
    classes = {c.replace(" ", "_"): c for c in world["classes"]}
    for task in between["tasks"] + own["tasks"]:
        a, b, _ = hybrid_parts(classes[task])
        assert a != b
    pairs = [hybrid_parts(classes[t])[:2] for t in between["tasks"]]
    assert len(set(pairs)) == len(pairs)
    others = cfg["experts"]["tasks"] + cfg["validation"]["tasks"]
    others += [t for g, spec in cfg["groups"].items() if g != "between" for t in spec["tasks"]]
    assert not (set(between["tasks"]) | set(own["tasks"])) & set(others)
    assert not set(between["tasks"]) & set(own["tasks"])


@pytest.mark.heavy
def test_the_default_config_plans_the_between_group_on_its_own_validation_tasks(tmp_path):
    """`snakemake -n` on config.yaml: the between group's settings are chosen on its own
    validation hybrids (selection/between/), its candidates read them, its table footnotes
    them; the other groups keep selection/<method>.json."""
    cfg = default_config()
    own = ",".join(cfg["groups"]["between"]["validation"]["tasks"])
    proc = dry_run(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    r = cfg["results"]
    for method in cfg["selection"]:
        assert f"--tasks {own} --dataset world --grid '{{\"{method}\"" in out
        assert f"--out {r}/selection/between/{method}.json" in out and f"--out {r}/selection/{method}.json" in out
    assert f"--selection {r}/selection/between/topk_weighted.json --out {r}/candidates/between/topk_weighted" in out
    assert f"--selection {r}/selection/topk_weighted.json --out {r}/candidates/in_dataset/topk_weighted" in out
    assert f"--selection {r}/selection/between/sglora.json" in out
    assert f"--group-selections between={r}/selection/between/selection.json" in out
    for method in cfg["groups"]["between"]["methods"]:
        assert f"{r}/metrics/between/{method}" in out, method
    for task in cfg["groups"]["between"]["tasks"]:
        assert f"{r}/loras/world/{task}" in out  # its Oracle


@pytest.mark.heavy
@pytest.mark.parametrize("change, message", [
    (lambda cfg: cfg["groups"]["between"]["validation"]["tasks"].append("fire_terrier_lily"),
     "groups.between.validation.tasks must be disjoint from the experts, every evaluation group and every "
     "validation set: fire_terrier_lily (also in groups.between.tasks)"),
    (lambda cfg: cfg["groups"]["between"]["validation"]["tasks"].append("cairn_terrier"),
     "cairn_terrier (also in validation.tasks)"),
    (lambda cfg: cfg["groups"]["between"]["validation"].update(dataset="nowhere"),
     "groups.between.validation.dataset 'nowhere' is not a key of datasets"),
    (lambda cfg: cfg["datasets"]["world"]["options"]["classes"].append("fire lily lily"),
     "config: datasets.world.options.classes: embedded world option classes: hybrid 'fire lily lily'"),
])
def test_bad_between_configs_are_named(tmp_path, change, message):
    cfg = default_config()
    change(cfg)
    proc = dry_run(cfg, tmp_path)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]


def test_the_world_step_names_a_bad_hybrid_of_the_config(tmp_path, capsys):
    """The world step (rule world) stops on a bad hybrid in datasets.<name>.options.classes
    before writing anything, and says which option and what a hybrid is."""
    from sglora.cli import main

    options = default_config()["datasets"]["world"]["options"] | {"images_per_class": 2, "test_per_class": 1}
    options["classes"] = options["classes"] + ["fire lily lily"]
    assert main(["world", "--out", str(tmp_path / "w"), "--options", json.dumps(options)]) not in (0, None)
    err = capsys.readouterr().err
    assert "embedded world option classes: hybrid 'fire lily lily' (\"<prefix> <A> <B>\"" in err
    assert not (tmp_path / "w" / "manifest.raw.parquet").exists()
