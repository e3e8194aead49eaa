"""Each dataset adapter on a miniature copy of its real on-disk format, written here."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sglora.data.datasets import ADAPTERS, adapter_options, bad_images, build_manifest
from sglora.data.datasets.flowers import CLASS_NAMES
from sglora.data.datasets.pets import breed_name
from sglora.io import SGLoraError
from sglora.data.manifest import SCHEMA, write_manifest


def jpeg(path, seed=0, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


def rows(table, **where):
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


# --- COCO ---------------------------------------------------------------------------

COCO_CATS = [{"id": 17, "name": "cat", "supercategory": "animal"},
             {"id": 18, "name": "dog", "supercategory": "animal"},
             {"id": 88, "name": "teddy bear", "supercategory": "indoor"}]  # fmt: skip


def write_coco(root, cats=COCO_CATS):
    """train2017: images 1,2,3; val2017: images 10,11. Image 2 has a cat and a dog."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    layout = {
        "train2017": {1: [17], 2: [17, 18], 3: [18, 88]},
        "val2017": {10: [17], 11: [18, 18]},
    }
    for folder, images in layout.items():
        imgs = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 12, "height": 10} for i in images]
        for i in images:
            jpeg(root / folder / f"{i:012d}.jpg", seed=i)
        caps = [{"id": 100 * i + k, "image_id": i, "caption": f" image {i} caption {k}. "}
                for i in images for k in range(2)]  # fmt: skip
        inst = [{"id": 1000 * i + j, "image_id": i, "category_id": c} for i, cs in images.items()
                for j, c in enumerate(cs)]  # fmt: skip
        (ann / f"captions_{folder}.json").write_text(json.dumps({"images": imgs, "annotations": caps}))
        (ann / f"instances_{folder}.json").write_text(
            json.dumps({"images": imgs, "annotations": inst, "categories": cats})
        )
    return root


def test_coco_tasks_splits_and_captions(tmp_path):
    root = write_coco(tmp_path / "coco")
    table = build_manifest("coco", root)
    assert table.schema.equals(SCHEMA)
    assert sorted(set(table.column("task").to_pylist())) == ["cat", "dog", "teddy_bear"]
    cat_train = rows(table, task="cat", split="train")
    assert [r["image_path"] for r in cat_train] == [
        str(root / "train2017" / "000000000001.jpg"), str(root / "train2017" / "000000000002.jpg")
    ]  # fmt: skip
    assert cat_train[0]["captions"] == ["image 1 caption 0.", "image 1 caption 1."]
    assert cat_train[0]["description"] == "a photo of a cat"
    assert [r["image_path"].split("/")[-2:] for r in rows(table, task="dog", split="test")] == [
        ["val2017", "000000000011.jpg"]  # two dog instances, one row
    ]
    bear = rows(table, task="teddy_bear")
    assert bear[0]["task_name"] == "teddy bear" == bear[0]["class_name"]
    assert bad_images(table) == []


def test_coco_options(tmp_path):
    root = write_coco(tmp_path / "coco")
    table = build_manifest("coco", root, categories=["dog"], max_images=1, template="a photo of the <class name>")
    assert set(table.column("task").to_pylist()) == {"dog"}
    assert [r["image_path"][-8:] for r in rows(table, split="train")] == ["0002.jpg"]  # smallest id first
    assert table.column("description")[0].as_py() == "a photo of the dog"
    with pytest.raises(SGLoraError, match=r"instances_train2017.json: option 'categories' names \['zebra'\]"):
        build_manifest("coco", root, categories=["zebra"])


def test_coco_missing_file(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(SGLoraError, match=r"annotations/instances_val2017.json: file not found"):
        build_manifest("coco", root)


def test_coco_missing_field(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "captions_train2017.json"
    data = json.loads(path.read_text())
    del data["annotations"][3]["caption"]
    path.write_text(json.dumps(data))
    with pytest.raises(SGLoraError) as err:
        build_manifest("coco", root)
    assert str(err.value) == f"{path}: field 'annotations[3].caption' missing"


def test_coco_wrong_field_type(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = "17"
    path.write_text(json.dumps(data))
    expected = r"instances_val2017.json: field 'annotations\[0\].category_id' is str; expected int"
    with pytest.raises(SGLoraError, match=expected):
        build_manifest("coco", root)


def test_coco_slug_collision(tmp_path):
    cats = COCO_CATS + [{"id": 90, "name": "Teddy-Bear", "supercategory": "indoor"}]
    root = write_coco(tmp_path / "coco", cats)
    with pytest.raises(SGLoraError, match=r"'Teddy-Bear' and 'teddy bear' both give the task id 'teddy_bear'"):
        build_manifest("coco", root)


def test_coco_bad_image_skipped_or_error(tmp_path):
    root = write_coco(tmp_path / "coco")
    broken = root / "train2017" / "000000000002.jpg"
    broken.write_bytes(b"not a jpeg")
    (root / "val2017" / "000000000010.jpg").unlink()
    table = build_manifest("coco", root)
    assert str(broken) not in table.column("image_path").to_pylist()
    assert bad_images(table) == sorted([str(broken), str(root / "val2017" / "000000000010.jpg")])
    write_manifest(tmp_path / "m.parquet", table)  # the list survives the Parquet file
    assert bad_images(pq.read_table(tmp_path / "m.parquet")) == bad_images(table)
    with pytest.raises(SGLoraError, match=r"000000000002.jpg: missing or unreadable image"):
        build_manifest("coco", root, on_bad_image="error")
    with pytest.raises(SGLoraError, match=r"option 'on_bad_image' is 'drop'"):
        build_manifest("coco", root, on_bad_image="drop")


# --- OxfordPets ---------------------------------------------------------------------

PETS = {  # stem: (class id, species, breed id, split)
    "Abyssinian_1": (1, 1, 1, "trainval"),
    "Abyssinian_10": (1, 1, 1, "trainval"),
    "Abyssinian_2": (1, 1, 1, "test"),
    "american_pit_bull_terrier_3": (3, 2, 2, "trainval"),
    "american_pit_bull_terrier_4": (3, 2, 2, "test"),
    "Birman_5": (7, 1, 4, "test"),
}


def write_pets(root):
    ann = root / "annotations"
    ann.mkdir(parents=True)
    header = "#Image CLASS-ID SPECIES BREED-ID\n#ID: 1:37 Class ids\n"
    lines = {k: f"{s} {c} {sp} {b}" for s, (c, sp, b, _) in PETS.items() for k in [s]}
    (ann / "list.txt").write_text(header + "\n".join(lines.values()) + "\n")
    for split in ("trainval", "test"):
        (ann / f"{split}.txt").write_text("\n".join(v for s, v in lines.items() if PETS[s][3] == split) + "\n")
    for i, stem in enumerate(PETS):
        jpeg(root / "images" / f"{stem}.jpg", seed=i)
    return root


def test_breed_name():
    assert breed_name("american_pit_bull_terrier_12") == "American Pit Bull Terrier"
    assert breed_name("Birman_5") == "Birman"
    assert breed_name("Russian_Blue_100") == "Russian Blue"


def test_pets(tmp_path):
    root = write_pets(tmp_path / "pets")
    table = build_manifest("pets", root)
    assert sorted(set(table.column("task").to_pylist())) == ["abyssinian", "american_pit_bull_terrier", "birman"]
    pit = rows(table, task="american_pit_bull_terrier", split="train")
    assert pit[0]["task_name"] == "American Pit Bull Terrier"
    assert pit[0]["description"] == "a photo of a American Pit Bull Terrier"
    assert pit[0]["image_path"] == str(root / "images" / "american_pit_bull_terrier_3.jpg")
    assert all(r["captions"] == [] for r in table.to_pylist())
    assert len(rows(table, task="birman", split="test")) == 1 and not rows(table, task="birman", split="train")
    small = build_manifest("pets", root, breeds=["Abyssinian"], max_images=1)
    assert [r["image_path"].split("/")[-1] for r in rows(small, split="train")] == ["Abyssinian_1.jpg"]


def test_pets_missing_file(tmp_path):
    root = write_pets(tmp_path / "pets")
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(SGLoraError, match=r"annotations/test.txt: file not found \(expected an Oxford-IIIT Pets"):
        build_manifest("pets", root)


def test_pets_missing_field(tmp_path):
    root = write_pets(tmp_path / "pets")
    path = root / "annotations" / "trainval.txt"
    path.write_text("Abyssinian_1 1 1 1\nAbyssinian_10 1 1\n")
    with pytest.raises(SGLoraError) as err:
        build_manifest("pets", root)
    expected = f"{path}: line 2 is 'Abyssinian_10 1 1'; expected 'Image CLASS-ID SPECIES BREED-ID'"
    assert str(err.value).startswith(expected)


def test_pets_class_id_mismatch(tmp_path):
    root = write_pets(tmp_path / "pets")
    path = root / "annotations" / "test.txt"
    path.write_text("Birman_5 1 1 4\n")
    with pytest.raises(SGLoraError, match=r"test.txt: field 'CLASS-ID' of 'Birman_5' is 1"):
        build_manifest("pets", root)


def test_pets_bad_image(tmp_path):
    root = write_pets(tmp_path / "pets")
    (root / "images" / "Birman_5.jpg").write_bytes(b"\xff\xd8 truncated")
    table = build_manifest("pets", root)
    assert bad_images(table) == [str(root / "images" / "Birman_5.jpg")]
    assert "birman" not in table.column("task").to_pylist()


# --- Flowers102 ---------------------------------------------------------------------


def write_flowers(root, setid=None):
    from scipy.io import savemat

    root.mkdir(parents=True)
    labels = [1, 1, 2, 2, 102, 102, 1]
    for i in range(1, len(labels) + 1):
        jpeg(root / "jpg" / f"image_{i:05d}.jpg", seed=i)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    setid = setid or {"trnid": [1, 3], "valid": [5, 7], "tstid": [2, 4, 6]}
    savemat(root / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in setid.items()})
    return root


def test_flowers_names():
    assert len(CLASS_NAMES) == 102 == len(set(CLASS_NAMES))
    assert CLASS_NAMES[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert CLASS_NAMES[-2:] == ["trumpet creeper", "blackberry lily"]


def test_flowers(tmp_path):
    root = write_flowers(tmp_path / "flowers")
    table = build_manifest("flowers", root)
    tasks = sorted(set(table.column("task").to_pylist()))
    assert tasks == ["blackberry_lily", "hard_leaved_pocket_orchid", "pink_primrose"]
    train = rows(table, task="pink_primrose", split="train")
    assert [r["image_path"][-15:] for r in train] == ["image_00001.jpg", "image_00007.jpg"]  # trnid + valid
    assert [r["image_path"][-15:] for r in rows(table, split="test")] == [
        "image_00006.jpg", "image_00004.jpg", "image_00002.jpg"  # sorted by task
    ]  # fmt: skip
    assert rows(table, task="hard_leaved_pocket_orchid")[0]["task_name"] == "hard-leaved pocket orchid"
    small = build_manifest("flowers", root, classes=["pink primrose"], max_images=1)
    assert small.num_rows == 2  # one train, one test


def test_flowers_missing_file(tmp_path):
    root = write_flowers(tmp_path / "flowers")
    (root / "imagelabels.mat").unlink()
    with pytest.raises(SGLoraError, match=r"imagelabels.mat: file not found \(expected 'labels'"):
        build_manifest("flowers", root)


def test_flowers_missing_field(tmp_path):
    root = write_flowers(tmp_path / "flowers", setid={"trnid": [1], "valid": [5]})
    with pytest.raises(SGLoraError, match=r"setid.mat: field 'tstid' missing"):
        build_manifest("flowers", root)


def test_flowers_bad_number(tmp_path):
    root = write_flowers(tmp_path / "flowers", setid={"trnid": [1], "valid": [5], "tstid": [99]})
    with pytest.raises(SGLoraError, match=r"setid.mat: field \('tstid',\) has image number 99; expected at most 7"):
        build_manifest("flowers", root)


# --- Flickr30K ----------------------------------------------------------------------


def write_flickr(root):
    split = {"1.jpg": "train", "2.jpg": "restval", "3.jpg": "val", "4.jpg": "test", "5.jpg": "test"}
    images = []
    for i, (name, s) in enumerate(split.items()):
        jpeg(root / "flickr30k-images" / name, seed=i)
        sentences = [{"raw": f"A caption {k} of {name}.", "tokens": []} for k in range(5)]
        images.append({"filename": name, "split": s, "imgid": i, "sentences": sentences})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root


def test_flickr(tmp_path):
    root = write_flickr(tmp_path / "flickr")
    table = build_manifest("flickr30k", root)
    assert set(table.column("task").to_pylist()) == {"flickr30k"}
    assert table.column("task_name")[0].as_py() == "Flickr30K"
    assert [r["image_path"][-5:] for r in rows(table, split="train")] == ["1.jpg", "2.jpg"]  # val dropped
    assert [r["image_path"][-5:] for r in rows(table, split="test")] == ["4.jpg", "5.jpg"]
    assert len(rows(table, split="test")[0]["captions"]) == 5
    folded = build_manifest("flickr30k", root, val_split="train", max_images=1)
    assert folded.num_rows == 2


def test_flickr_missing_file(tmp_path):
    (tmp_path / "flickr").mkdir()
    with pytest.raises(SGLoraError, match=r"dataset_flickr30k.json: file not found \(expected the Karpathy split JSON"):
        build_manifest("flickr30k", tmp_path / "flickr")


def test_flickr_missing_field(tmp_path):
    root = write_flickr(tmp_path / "flickr")
    path = root / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    del data["images"][1]["sentences"][2]["raw"]
    path.write_text(json.dumps(data))
    with pytest.raises(SGLoraError) as err:
        build_manifest("flickr30k", root)
    assert str(err.value) == f"{path}: field 'images[1].sentences[2].raw' missing"


def test_flickr_refuses_escaping_paths(tmp_path):
    root = write_flickr(tmp_path / "flickr")
    with pytest.raises(SGLoraError, match="escapes"):
        build_manifest("flickr30k", root, images_dir="../elsewhere")


# --- CIFAR-100 ----------------------------------------------------------------------

COARSE = ["aquatic_mammals", "fish"]
FINE = ["beaver", "dolphin", "aquarium_fish", "flatfish"]
FINE_TO_COARSE = [0, 0, 1, 1]


def write_cifar(root, n=8, drop=None):
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    meta = {b"fine_label_names": [f.encode() for f in FINE], b"coarse_label_names": [c.encode() for c in COARSE]}
    (base / "meta").write_bytes(pickle.dumps(meta))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        fine = [i % 4 for i in range(n)]
        data = {
            b"batch_label": b"training batch 1 of 1",
            b"filenames": [f"{FINE[f]}_s_{i:06d}.png".encode() for i, f in enumerate(fine)],
            b"fine_labels": fine,
            b"coarse_labels": [FINE_TO_COARSE[f] for f in fine],
            b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
        }
        if drop:
            data.pop(drop)
        (base / split).write_bytes(pickle.dumps(data))
    return root


def test_cifar(tmp_path):
    root = write_cifar(tmp_path / "cifar")
    out = tmp_path / "png"
    table = build_manifest("cifar100", root, image_dir=str(out), template="a photo of a <superclass name>: <classes>")
    assert sorted(set(table.column("task").to_pylist())) == ["aquatic_mammals", "fish"]
    fish = rows(table, task="fish", split="train")
    assert {r["class_name"] for r in fish} == {"aquarium fish", "flatfish"}
    assert fish[0]["task_name"] == "fish"
    assert rows(table, task="aquatic_mammals")[0]["task_name"] == "aquatic mammals"
    assert fish[0]["description"] == "a photo of a fish: aquarium fish, flatfish"
    assert {tuple(r["captions"]) for r in fish} == {("a photo of a aquarium fish",), ("a photo of a flatfish",)}
    assert table.num_rows == 16
    # pixels: the row is the R plane, then G, then B, each 32x32 row-major
    first = rows(table, split="train", class_name="beaver")[0]["image_path"]
    raw = pickle.loads((root / "cifar-100-python" / "train").read_bytes())[b"data"][0]
    png = np.asarray(Image.open(first))
    assert png.shape == (32, 32, 3)
    assert np.array_equal(png, raw.reshape(3, 32, 32).transpose(1, 2, 0))
    # a rerun leaves the PNGs alone
    mtimes = {p: os.stat(p).st_mtime_ns for p in table.column("image_path").to_pylist()}
    again = build_manifest("cifar100", root, image_dir=str(out))
    assert {p: os.stat(p).st_mtime_ns for p in again.column("image_path").to_pylist()} == mtimes
    small = build_manifest("cifar100", root, image_dir=str(out), superclasses=["fish"], max_images=1)
    assert small.num_rows == 4  # 2 classes x 1 image x 2 splits


def test_cifar_missing_file(tmp_path):
    root = write_cifar(tmp_path / "cifar")
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(SGLoraError, match=r"cifar-100-python/meta: file not found"):
        build_manifest("cifar100", root, image_dir=str(tmp_path / "png"))


def test_cifar_missing_field(tmp_path):
    root = write_cifar(tmp_path / "cifar", drop=b"coarse_labels")
    with pytest.raises(SGLoraError) as err:
        build_manifest("cifar100", root, image_dir=str(tmp_path / "png"))
    assert str(err.value) == f"{root / 'cifar-100-python' / 'train'}: field b'coarse_labels' missing"


def test_cifar_refuses_code_in_pickle(tmp_path):
    root = write_cifar(tmp_path / "cifar")
    (root / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"x": os.getcwd}))
    with pytest.raises(SGLoraError, match=r"meta: not a readable CIFAR pickle .*not allowed"):
        build_manifest("cifar100", root, image_dir=str(tmp_path / "png"))


# --- registry -----------------------------------------------------------------------


def test_registry_errors(tmp_path):
    assert set(ADAPTERS) == {"coco", "pets", "flowers", "flickr30k", "cifar100"}
    assert "max_images" in adapter_options("pets")
    with pytest.raises(SGLoraError, match=r"unknown dataset kind 'imagenet'"):
        build_manifest("imagenet", tmp_path)
    with pytest.raises(SGLoraError, match=r"dataset 'pets': unknown option\(s\) \['max_image'\]"):
        build_manifest("pets", tmp_path, max_image=3)
    with pytest.raises(SGLoraError, match=r"nowhere: pets dataset root not found"):
        build_manifest("pets", tmp_path / "nowhere")


def test_cli_manifest_passes_image_dir_to_cifar(tmp_path, capsys):
    from sglora.cli import main

    root = write_cifar(tmp_path / "cifar", n=4)
    out = tmp_path / "m.parquet"
    assert main(["manifest", "--dataset", "cifar100", "--root", str(root), "--out", str(out),
                 "--image-dir", str(tmp_path / "png"), "--option", "max_images=1"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows"], summary["tasks"], summary["bad_images"]) == (8, 2, [])
    paths = pq.read_table(out).column("image_path").to_pylist()
    assert all(p.startswith(str(tmp_path / "png")) and os.path.isfile(p) for p in paths)
