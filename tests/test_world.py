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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_families_agree_on_as_few_looks_as_possible(seed):
    """Colours: pairwise derangements (no family renders any colour like another); textures
    and backgrounds (4 values, 6 families): two families share at most one value's look.
    The old draw re-permuted after deranging, so two families could share whole maps."""
    import itertools

    looks = list(family_looks(seed).values())
    assert looks[0].colour == tuple(range(len(COLOURS)))
    for attr, most in (("colour", 0), ("texture", 1), ("background", 1)):
        for a, b in itertools.combinations(looks, 2):
            shared = sum(x == y for x, y in zip(getattr(a, attr), getattr(b, attr)))
            assert shared <= most, (attr, a, b)


def test_a_family_caption_is_a_positive_of_every_image_of_its_family(tmp_path):
    """Pretraining positives: "a photo of a lily" describes every lily, a class caption only
    its class, and a mentioned attribute must match."""
    import numpy as np

    from sglora.world import pretraining_pairs

    generate_world(tmp_path, ["tiger lily", "water lily", "fox terrier"], images_per_class=30, test_per_class=5,
                   image_size=32, progress=False)
    pairs = pretraining_pairs([tmp_path])
    caps = pq.read_table(tmp_path / "captions.parquet").to_pylist()
    by_path = {r["image_path"]: r for r in caps}
    idx = np.arange(len(pairs.images))
    pos = pairs.describes(idx, idx).numpy()
    assert pos.diagonal().all()  # every caption describes its own image
    for j, text in enumerate(pairs.texts):
        said = by_path[pairs.images[j]]
        for i, path in enumerate(pairs.images):
            img = by_path[path]
            expect = said["coarse_name"] in (img["class_name"], img["family"])
            for key in ("count", "size", "position"):
                if said[f"coarse_{key}"] is not None:
                    expect &= said[f"coarse_{key}"] == img[key]
            assert pos[i, j] == expect, (text, path)
    family_only = [j for j, r in enumerate(pairs.texts) if by_path[pairs.images[j]]["coarse_name"] == "lily"]
    assert family_only, "some captions name only the family"
