"""The embedded world: determinism and its semantic structure."""

import pyarrow.parquet as pq
import pytest

from sglora.io import SGLoraError
from sglora.world import COLOURS, FAMILIES, class_names, family_looks, generate_world


def test_same_seed_gives_byte_identical_files(tmp_path):
    classes = ["scottish terrier", "tiger lily"]
    generate_world(tmp_path / "a", classes, images_per_class=6, test_per_class=2, image_size=32, progress=False)
    generate_world(tmp_path / "b", classes, images_per_class=6, test_per_class=2, image_size=32, progress=False)
    for name in ("manifest.raw.parquet", "captions.parquet"):
        a = (tmp_path / "a" / name).read_bytes()
        b = (tmp_path / "b" / name).read_bytes()
        # image paths differ by folder; compare the tables with the folder stripped, and the PNG bytes
        ta = pq.read_table(tmp_path / "a" / name).to_pylist()
        tb = pq.read_table(tmp_path / "b" / name).to_pylist()
        for r in ta + tb:
            r["image_path"] = r["image_path"].split("/images/")[1]
        assert ta == tb and len(a) > 0 and len(b) > 0
    for png in (tmp_path / "a" / "images").rglob("*.png"):
        assert png.read_bytes() == (tmp_path / "b" / png.relative_to(tmp_path / "a")).read_bytes()


def test_regenerating_in_place_is_byte_identical(tmp_path):
    classes = ["fox terrier"]
    generate_world(tmp_path, classes, images_per_class=5, test_per_class=2, image_size=32, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    generate_world(tmp_path, classes, images_per_class=5, test_per_class=2, image_size=32, progress=False)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after


def test_structure_and_captions(tmp_path):
    generate_world(tmp_path, ["calla lily"], images_per_class=8, test_per_class=3, image_size=32, progress=False)
    man = pq.read_table(tmp_path / "manifest.raw.parquet").to_pylist()
    assert [r["split"] for r in man].count("test") == 3
    assert all(r["task"] == "calla_lily" and r["description"] == "a photo of a calla lily" for r in man)
    caps = pq.read_table(tmp_path / "captions.parquet").to_pylist()
    for r in caps:
        assert len(r["captions"]) == 4 and len(set(r["captions"])) == 4
        assert all(r["colour"] in c and "calla lily" in c for c in r["captions"])
        # the coarse pretraining caption never names the family-specific attributes
        assert r["colour"] not in r["coarse_caption"] and r["texture"] not in r["coarse_caption"]


def test_families_share_words_and_differ_in_looks():
    names = class_names()
    assert len(names) >= 24 and len(FAMILIES) >= 6
    for fam, (_, prefixes) in FAMILIES.items():
        assert all(f"{p} {fam}" in names for p in prefixes)
    looks = family_looks(0)
    perms = [l.colour for l in looks.values()]
    assert all(sorted(p) == list(range(len(COLOURS))) for p in perms)
    # no two families render colours the same way
    assert len(set(perms)) == len(perms)


def test_bad_class_and_split_are_errors(tmp_path):
    with pytest.raises(SGLoraError, match="not a class of the world"):
        generate_world(tmp_path, ["zebra"], progress=False)
    with pytest.raises(SGLoraError, match="test_per_class"):
        generate_world(tmp_path, ["fox terrier"], images_per_class=4, test_per_class=4, progress=False)
