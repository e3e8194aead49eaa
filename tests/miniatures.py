"""Miniature copies of the real datasets, in the exact on-disk formats their authors
distribute, with every class of the real dataset (names and ids as in the originals).

``write_all(root)`` writes one folder per dataset kind and returns ``{kind: folder}``:

- ``coco``: ``annotations/{captions,instances}_{train,val}2017.json`` + ``{train,val}2017/*.jpg``;
  all 80 categories (official ids 1..90 with gaps, names and supercategories);
- ``pets``: ``images/<Breed_Name>_<n>.jpg`` + ``annotations/{list,trainval,test}.txt``; all 37 breeds
  (cats capitalised, dogs lower-case, CLASS-ID / SPECIES / BREED-ID as in the original list.txt);
- ``flowers``: ``jpg/image_NNNNN.jpg`` + ``imagelabels.mat`` + ``setid.mat``; all 102 labels;
- ``flickr30k``: ``flickr30k-images/*.jpg`` + Karpathy's ``dataset_flickr30k.json``;
- ``cifar100``: ``cifar-100-python/{meta,train,test}`` pickles; all 100 fine / 20 coarse classes.

Each class gets ``TRAIN`` training and ``TEST`` test images (tiny JPEGs; CIFAR rows are
32x32), so every preset in ``config/`` can be pointed at these folders: its class names
are checked against the real name lists held here, and its DAG can be dry-run (or even
run) without the real data. Used by ``tests/dryrun_configs.py`` and ``tests/test_presets.py``.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np

TRAIN, TEST = 3, 2

# MS-COCO 2017: (id, name, supercategory), exactly as in instances_*2017.json.
COCO_CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]  # fmt: skip
assert len(COCO_CATEGORIES) == 80

# Oxford-IIIT Pets: file-name prefixes (cats capitalised, dogs lower-case). CLASS-ID is
# the 1-based position in case-insensitive alphabetical order, as in annotations/list.txt.
PETS_PREFIXES = [
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
    "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
    "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
    "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug",
    "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "Siamese",
    "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
]  # fmt: skip
assert len(PETS_PREFIXES) == 37 and PETS_PREFIXES == sorted(PETS_PREFIXES, key=str.lower)

# CIFAR-100: coarse label -> its five fine labels (official meta order: both alphabetical).
CIFAR_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR_COARSE = sorted(CIFAR_SUPERCLASSES)
CIFAR_FINE = sorted(f for fs in CIFAR_SUPERCLASSES.values() for f in fs)
assert len(CIFAR_COARSE) == 20 and len(CIFAR_FINE) == 100 == len(set(CIFAR_FINE))


def _jpeg_bytes(rng: np.random.Generator, size=(16, 12)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _write_jpeg(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg_bytes(rng))


def write_coco(root: Path, rng: np.random.Generator) -> Path:
    """Each category gets TRAIN images in train2017 and TEST in val2017; every other
    image also shows the next category (COCO images are multi-label), 5 captions each."""
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i, "name": n, "supercategory": s} for i, n, s in COCO_CATEGORIES]
    next_image_id = 1
    for folder, per_cat in (("train2017", TRAIN), ("val2017", TEST)):
        images, captions, instances = [], [], []
        for c, (cat_id, name, _) in enumerate(COCO_CATEGORIES):
            for k in range(per_cat):
                image_id = next_image_id
                next_image_id += 1
                file_name = f"{image_id:012d}.jpg"
                _write_jpeg(root / folder / file_name, rng)
                images.append({"id": image_id, "file_name": file_name, "width": 16, "height": 12})
                for j in range(5):
                    captions.append({"id": 10 * image_id + j, "image_id": image_id,
                                     "caption": f"A photo of a {name}, view {k}, caption {j}."})  # fmt: skip
                cats = [cat_id] + ([COCO_CATEGORIES[(c + 1) % 80][0]] if k % 2 else [])
                for j, cid in enumerate(cats):
                    instances.append({"id": 100 * image_id + j, "image_id": image_id, "category_id": cid,
                                      "iscrowd": 0, "area": 10.0, "bbox": [0, 0, 4, 4]})  # fmt: skip
        info = {"description": "sglora miniature of COCO 2017", "version": "1.0", "year": 2017}
        (ann / f"captions_{folder}.json").write_text(json.dumps({"info": info, "images": images,
                                                                 "annotations": captions}))  # fmt: skip
        (ann / f"instances_{folder}.json").write_text(
            json.dumps({"info": info, "images": images, "annotations": instances, "categories": categories})
        )
    return root


def write_pets(root: Path, rng: np.random.Generator) -> Path:
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    header = "#Image CLASS-ID SPECIES BREED-ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-12:Cat 1:25:Dog\n"
    species_count = {1: 0, 2: 0}
    lines = {"trainval": [], "test": []}
    for class_id, prefix in enumerate(PETS_PREFIXES, start=1):
        species = 1 if prefix[0].isupper() else 2
        species_count[species] += 1
        breed_id = species_count[species]
        for n in range(1, TRAIN + TEST + 1):
            stem = f"{prefix}_{n}"
            _write_jpeg(root / "images" / f"{stem}.jpg", rng)
            lines["trainval" if n <= TRAIN else "test"].append(f"{stem} {class_id} {species} {breed_id}")
    (ann / "list.txt").write_text(header + "\n".join(sorted(lines["trainval"] + lines["test"])) + "\n")
    for split, ls in lines.items():
        (ann / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return root


def write_flowers(root: Path, rng: np.random.Generator) -> Path:
    """Per label: 2 trnid + 1 valid (= TRAIN train images) and TEST tstid images."""
    from scipy.io import savemat

    from sglora.data.datasets.flowers import CLASS_NAMES

    root.mkdir(parents=True, exist_ok=True)
    labels, setid = [], {"trnid": [], "valid": [], "tstid": []}
    for label in range(1, len(CLASS_NAMES) + 1):
        for k in range(TRAIN + TEST):
            labels.append(label)
            number = len(labels)
            _write_jpeg(root / "jpg" / f"image_{number:05d}.jpg", rng)
            key = "tstid" if k >= TRAIN else ("valid" if k == TRAIN - 1 else "trnid")
            setid[key].append(number)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(root / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in setid.items()})
    return root


def write_flickr30k(root: Path, rng: np.random.Generator) -> Path:
    splits = ["train"] * (2 * TRAIN) + ["restval"] + ["val"] + ["test"] * (2 * TEST)
    images = []
    for i, split in enumerate(splits):
        name = f"{1000092795 + i}.jpg"
        _write_jpeg(root / "flickr30k-images" / name, rng)
        sentences = [{"raw": f"A person does thing {j} in picture {i}.", "tokens": [], "imgid": i, "sentid": 5 * i + j}
                     for j in range(5)]  # fmt: skip
        images.append({"filename": name, "split": split, "imgid": i, "sentids": list(range(5 * i, 5 * i + 5)),
                       "sentences": sentences})  # fmt: skip
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root


def write_cifar100(root: Path, rng: np.random.Generator) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    meta = {b"fine_label_names": [f.encode() for f in CIFAR_FINE],
            b"coarse_label_names": [c.encode() for c in CIFAR_COARSE]}  # fmt: skip
    (base / "meta").write_bytes(pickle.dumps(meta))
    coarse_of = {f: CIFAR_COARSE.index(c) for c, fs in CIFAR_SUPERCLASSES.items() for f in fs}
    for split, per_class in (("train", TRAIN), ("test", TEST)):
        fine = [i for i in range(len(CIFAR_FINE)) for _ in range(per_class)]
        data = {
            b"batch_label": f"{split} batch 1 of 1".encode(),
            b"filenames": [f"{CIFAR_FINE[f]}_s_{i:06d}.png".encode() for i, f in enumerate(fine)],
            b"fine_labels": fine,
            b"coarse_labels": [coarse_of[CIFAR_FINE[f]] for f in fine],
            b"data": rng.integers(0, 255, (len(fine), 3072), dtype=np.uint8),
        }
        (base / split).write_bytes(pickle.dumps(data))
    return root


WRITERS = {
    "coco": write_coco,
    "pets": write_pets,
    "flowers": write_flowers,
    "flickr30k": write_flickr30k,
    "cifar100": write_cifar100,
}


def write_all(root: Path) -> dict[str, Path]:
    """Write every miniature under ``root`` (``root/<kind>``); returns ``{kind: folder}``."""
    root = Path(root)
    out = {}
    for i, (kind, writer) in enumerate(WRITERS.items()):
        out[kind] = writer(root / kind, np.random.default_rng(i))
    return out


if __name__ == "__main__":
    import sys

    for kind, path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "miniatures")).items():
        print(kind, path)
