"""Oxford-IIIT Pets: one task per breed (37), captions come later from the captioner.

Layout as distributed: ``images/<Breed_Name>_<n>.jpg`` (cat breeds capitalised, dog
breeds lower-case) and ``annotations/{list,trainval,test}.txt`` whose lines read
``Image CLASS-ID SPECIES BREED-ID`` (``#`` starts a comment). ``trainval.txt`` gives the
``train`` split and ``test.txt`` the ``test`` split; ``list.txt`` is the index of all
images and fixes the breed of each class id.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ...io import SGLoraError, unique_slugs
from ..manifest import DEFAULT_TEMPLATE, make_manifest
from ._common import check_limit, class_row, filter_images, read_text, require_root, select_names, with_bad_images

SPLIT_FILES = {"train": "trainval.txt", "test": "test.txt"}
FIELDS = "Image CLASS-ID SPECIES BREED-ID"


def breed_name(stem: str) -> str:
    """``"american_pit_bull_terrier_12"`` -> ``"American Pit Bull Terrier"``: the file
    name without its number, underscores to spaces, each word capitalised (the case in
    the file names only tells cats from dogs, which the task name does not need)."""
    prefix = stem.rsplit("_", 1)[0]
    return " ".join(word.capitalize() for word in prefix.split("_") if word)


def read_list(path: Path) -> list[tuple[str, int]]:
    """``[(image stem, class id)]`` from a Pets annotation file, each line checked."""
    text = read_text(path, f"an Oxford-IIIT Pets annotation list ('{FIELDS}' per line)")
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            raise SGLoraError(f"{path}: line {n} is {line!r}; expected '{FIELDS}' (a name and three integers)")
        if "_" not in parts[0]:
            raise SGLoraError(f"{path}: line {n}: field 'Image' is {parts[0]!r}; expected '<Breed_Name>_<n>'")
        out.append((parts[0], int(parts[1])))
    return out


def _number_order(stem: str) -> tuple[str, int, str]:
    """Sort ``Birman_2`` before ``Birman_10``."""
    prefix, _, num = stem.rpartition("_")
    return (prefix, int(num) if num.isdigit() else -1, stem)


def build(
    root: str | Path,
    breeds: list[str] | None = None,
    max_images: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    on_bad_image: str = "skip",
) -> pa.Table:
    """The Pets manifest.

    - ``breeds``: breed names to keep (``"Birman"``, ``"American Pit Bull Terrier"``);
      default all 37.
    - ``max_images``: at most this many images per breed and split, lowest image numbers first.
    - ``template``: description template (``<class name>`` is the breed).
    - ``on_bad_image``: ``skip`` (leave out and list) or ``error``.
    """
    root = require_root(root, "pets")
    max_images = check_limit(max_images, "max_images")
    ann = root / "annotations"
    index_path = ann / "list.txt"
    breed_of: dict[int, str] = {}
    for stem, class_id in read_list(index_path):
        name = breed_name(stem)
        if breed_of.setdefault(class_id, name) != name:
            raise SGLoraError(
                f"{index_path}: field 'CLASS-ID' {class_id} is given to {breed_of[class_id]!r} and {name!r}; "
                "expected one breed per class id"
            )
    names = select_names(sorted(set(breed_of.values())), breeds, "breeds", index_path)
    slugs = unique_slugs(names, str(index_path))
    rows = []
    for split, file in SPLIT_FILES.items():
        path = ann / file
        per_breed: dict[str, list[str]] = {}
        for stem, class_id in read_list(path):
            name = breed_name(stem)
            if breed_of.get(class_id) != name:
                raise SGLoraError(
                    f"{path}: field 'CLASS-ID' of {stem!r} is {class_id}; expected the id "
                    f"{index_path.name} gives to {name!r}"
                )
            if name in slugs:
                per_breed.setdefault(name, []).append(stem)
        for name, stems in per_breed.items():
            for stem in sorted(stems, key=_number_order)[: max_images or None]:
                rows.append(class_row("pets", slugs[name], name, template, root / "images" / f"{stem}.jpg", split))
    rows, bad = filter_images(rows, on_bad_image)
    return with_bad_images(make_manifest(rows), bad)
