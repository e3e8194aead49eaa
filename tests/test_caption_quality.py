"""Caption quality (sglora/data/captioning/quality.py): what a caption states, checked against
hand-labelled captions; the shares against a plain reference count; the step's files."""

from __future__ import annotations

import csv
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sglora.io import SGLoraError
from sglora.data.captioning.quality import (ATTRIBUTES, Statements, attribute_vocabulary, caption_quality,
                                            rejected_share)
from sglora.data.world import generate_world

CLASSES = ["american shorthair", "fire lily", "black oak", "fire terrier lily", "tiger lily"]

#: captions labelled by hand: what each states, attribute by attribute (absent: states nothing)
HAND = [
    ("two small purple american shorthair with a checkered pattern on the left of a dark background",
     {"count": {"two"}, "size": {"small"}, "colour": {"purple"}, "class name": {"american shorthair"},
      "texture": {"checkered"}, "position": {"left"}, "background": {"dark"}}),
    ("A crimson cat, tiny, sitting somewhere", {}),
    ("Fire Terrier Lily: dark blue, striped.",
     {"class name": {"fire terrier lily"}, "background": {"dark"}, "colour": {"blue"}, "texture": {"striped"}}),
    ("a black oak, red and green, one on the top", {"class name": {"black oak"}, "colour": {"red", "green"},
                                                    "count": {"one"}, "position": {"top"}}),
    ("a fire lily beside a tiger lily on sandy ground",
     {"class name": {"fire lily", "tiger lily"}, "background": {"sandy"}}),
    ("the reddish lilypad is medium-sized", {"size": {"medium"}}),
]


@pytest.mark.parametrize("caption, labelled", HAND)
def test_what_a_caption_states_matches_hand_labels(caption, labelled):
    said = Statements(attribute_vocabulary(CLASSES))(caption)
    assert said == {a: labelled.get(a, set()) for a in ATTRIBUTES}


def reference_shares(images, attribute, vocab):
    """The plain count: for each caption, the values of one attribute found as whole words
    (regex), longest first, masking what a longer value of any attribute took."""
    right = wrong = n = 0
    everything = sorted(((v, a) for a, vs in vocab.items() for v in vs), key=lambda t: -len(t[0].split()))
    for truth, captions in images:
        for caption in captions:
            text = " " + " ".join(re.findall(r"[a-z]+", caption.lower())) + " "
            found = set()
            for value, a in everything:
                while f" {value} " in text:
                    text = text.replace(f" {value} ", " | ", 1)
                    if a == attribute:
                        found.add(value)
            n += 1
            right += found == {truth}
            wrong += bool(found - {truth})
    return right / n, wrong / n


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, CLASSES[:4], images_per_class=6, test_per_class=2, image_size=32, progress=False)
    return out


def captioned(world, tmp_path, change=lambda caption, row: caption):
    """The world's manifest with captions (the world's own, or changed by ``change``)."""
    truth = {r["image_path"]: r for r in pq.read_table(world / "captions.parquet").to_pylist()}
    table = pq.read_table(world / "manifest.raw.parquet")
    caps = [[change(c, truth[p]) for c in truth[p]["captions"]] for p in table.column("image_path").to_pylist()]
    table = table.set_column(table.column_names.index("captions"), "captions", pa.array(caps, pa.list_(pa.string())))
    pq.write_table(table, tmp_path / "manifest.parquet")
    return tmp_path / "manifest.parquet"


def test_the_worlds_own_captions_state_every_attribute_truly(world, tmp_path):
    rows = caption_quality(captioned(world, tmp_path), world / "captions.parquet")
    assert [r.attribute for r in rows] == list(ATTRIBUTES)
    for r in rows:
        assert r.captions == 4 * 6 * 4 and r.truth == r.truth_ground == 1.0 and r.wrong == 0.0, r
    by = {r.attribute: r for r in rows}
    assert by["class name"].values == 4 and by["class name"].chance == 0.25


def test_shares_of_changed_captions_equal_the_reference_count(world, tmp_path):
    """Every other caption gets a wrong colour, every third loses its count word, one in five
    names the family only: the shares equal a plain regex count; the ground-truth column keeps 1."""
    from sglora.data.world import COLOURS

    seen = {"i": 0}

    def change(caption, row):
        seen["i"] += 1
        i = seen["i"]
        if i % 2 == 0:
            wrong = COLOURS[(COLOURS.index(row["colour"]) + 1) % len(COLOURS)]
            caption = re.sub(rf"\b{row['colour']}\b", wrong, caption)
        if i % 3 == 0:
            caption = re.sub(rf"\b{row['count']}\b", "some", caption)
        if i % 5 == 0:
            caption = caption.replace(row["class_name"], row["class_name"].split()[-1])
        return caption

    manifest = captioned(world, tmp_path, change)
    rows = {r.attribute: r for r in caption_quality(manifest, world / "captions.parquet")}
    truth = {r["image_path"]: r for r in pq.read_table(world / "captions.parquet").to_pylist()}
    column = {"class name": "class_name"}
    vocab = attribute_vocabulary([r["class_name"] for r in truth.values()])
    for attribute in ATTRIBUTES:
        images = [(truth[r["image_path"]][column.get(attribute, attribute)], r["captions"])
                  for r in pq.read_table(manifest).to_pylist()]
        assert (rows[attribute].truth, rows[attribute].wrong) == pytest.approx(reference_shares(images, attribute, vocab))
        assert rows[attribute].truth_ground == 1.0
    assert rows["colour"].truth == pytest.approx(0.5) and rows["colour"].wrong == pytest.approx(0.5)
    assert rows["count"].wrong == 0.0 and rows["count"].truth == pytest.approx(2 / 3, abs=0.02)
    assert rows["texture"].truth == 1.0 and rows["class name"].truth < 0.85


def test_rejected_share_sums_the_shards(tmp_path):
    schema = pa.schema([("captions", pa.list_(pa.string())), ("rejected", pa.int64())])
    pq.write_table(pa.Table.from_pylist([{"captions": ["a", "b"], "rejected": 1}, {"captions": ["c"], "rejected": 0}],
                                        schema=schema), tmp_path / "shard-00000-x.parquet")
    pq.write_table(pa.Table.from_pylist([{"captions": ["d", "e", "f"], "rejected": 3}], schema=schema),
                   tmp_path / "shard-00001-y.parquet")
    (tmp_path / "settings.json").write_text("{}")
    assert rejected_share(tmp_path) == (4, 10)
    assert rejected_share(None) == (0, 0) and rejected_share(tmp_path / "absent") == (0, 0)


def test_a_manifest_of_another_world_is_an_error_naming_both_files(world, tmp_path):
    manifest = captioned(world, tmp_path)
    table = pq.read_table(manifest)
    paths = [p.replace("images", "elsewhere") for p in table.column("image_path").to_pylist()]
    pq.write_table(table.set_column(table.column_names.index("image_path"), "image_path", pa.array(paths)), manifest)
    with pytest.raises(SGLoraError, match="has no row in .*captions.parquet"):
        caption_quality(manifest, world / "captions.parquet")
    with pytest.raises(SGLoraError, match="columns .* missing"):
        caption_quality(manifest, manifest)


def test_the_step_writes_the_csv_and_the_markdown_and_says_who_wrote_the_captions(world, tmp_path):
    from sglora.cli import main

    manifest = captioned(world, tmp_path)
    datasets = {"world": {"manifest": str(manifest), "truth": str(world / "captions.parquet"),
                          "shard_dir": str(tmp_path / "shards"), "backend": "synthetic",
                          "options": {"captions_file": str(world / "captions.parquet")}}}
    out, md = tmp_path / "q" / "quality.csv", tmp_path / "q" / "quality.md"
    assert main(["caption-quality", "--datasets", json.dumps(datasets), "--out", str(out), "--markdown", str(md)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["attribute"] for r in rows] == list(ATTRIBUTES) and {r["truth"] for r in rows} == {"1.0"}
    text = md.read_text()
    assert "backend `synthetic`): no model wrote them" in text and "rejected" not in text
    assert len(re.findall(r"^\| (class name|colour|texture|background|size|position|count) \|", text, re.M)) == 7


def test_a_models_captions_say_what_the_filter_rejected(world, tmp_path):
    from sglora.data.captioning.quality import quality_table

    shards = tmp_path / "shards"
    shards.mkdir()
    schema = pa.schema([("captions", pa.list_(pa.string())), ("rejected", pa.int64())])
    pq.write_table(pa.Table.from_pylist([{"captions": ["a", "b", "c"], "rejected": 1}], schema=schema),
                   shards / "shard-00000-x.parquet")
    spec = {"manifest": captioned(world, tmp_path), "truth": world / "captions.parquet", "backend": "qwen2vl",
            "model": "results/embedded/captioner", "shards": shards}
    rows, text = quality_table({"world": spec})
    assert "captions by `results/embedded/captioner`; the caption filter rejected 1 of 4 generations (25.0 %)" in text
    assert {(r["backend"], r["rejected"], r["generated"]) for r in rows} == {("qwen2vl", 1, 4)}
