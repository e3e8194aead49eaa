"""Hybrid classes of the embedded world ("<prefix> <A> <B>": family A's colour and texture
looks, family B's background look and shape), on the look tables and on rendered pixels;
and the default config's `between` group that evaluates them."""

from __future__ import annotations

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
from sglora.world import (ALL_BACKGROUND_TONES, ALL_BACKGROUNDS, ALL_TEXTURES, COLOURS, PALETTE, class_look,
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


def test_pretraining_knows_a_hybrid_by_its_name_and_b_family(tmp_path):
    """The backbone's pretraining pairs take hybrids: a caption naming the hybrid describes
    its images only; one naming its family (B, whose shape it has) describes every B image."""
    from sglora.world import pretraining_pairs

    generate_world(tmp_path, [HYBRID, "tiger lily", MIRROR], images_per_class=30, test_per_class=5, image_size=32,
                   progress=False)
    pairs = pretraining_pairs([tmp_path])
    caps = {r["image_path"]: r for r in pq.read_table(tmp_path / "captions.parquet").to_pylist()}
    idx = np.arange(len(pairs.images))
    pos = pairs.describes(idx, idx).numpy()
    classes = [caps[p]["class_name"] for p in pairs.images]
    for j, path in enumerate(pairs.images):
        said = caps[path]
        if said["coarse_count"] is None and said["coarse_position"] is None:
            expect = [said["coarse_name"] in (c, family_of(c)) for c in classes]
            assert list(pos[:, j]) == expect, said["coarse_caption"]
    assert {caps[p]["coarse_name"] for p in pairs.images} >= {HYBRID, "lily", "terrier"}
