"""Oxford Flowers102: one task per flower class, captions come later from the captioner.

Layout as distributed: ``jpg/image_00001.jpg`` ..., ``imagelabels.mat`` (``labels``,
1..102, one per image) and ``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image
numbers). ``trnid`` + ``valid`` give the ``train`` split, ``tstid`` the ``test`` split.
The archive has no class names; :data:`CLASS_NAMES` is the list everyone uses (from
the VGG page, as in CLIP and CoOp), index ``label - 1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ...io import SGLoraError, unique_slugs
from ..manifest import DEFAULT_TEMPLATE, make_manifest
from ._common import check_limit, class_row, filter_images, require_file, require_root, select_names, with_bad_images

CLASS_NAMES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
    "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
    "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle",
    "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian",
    "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
    "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil",
    "sword lily", "poinsettia", "bolero deep blue", "wallflower", "marigold", "buttercup",
    "oxeye daisy", "common dandelion", "petunia", "wild pansy", "primula", "sunflower",
    "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan",
    "silverbush", "californian poppy", "osteospermum", "spring crocus", "bearded iris",
    "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple",
    "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
    "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss",
    "foxglove", "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia",
    "blanket flower", "trumpet creeper", "blackberry lily",
]  # fmt: skip
assert len(CLASS_NAMES) == 102
SPLIT_KEYS = {"train": ("trnid", "valid"), "test": ("tstid",)}


def _mat_vector(path: Path, key: str, what: str) -> np.ndarray:
    """A MATLAB row vector of positive integers as a flat int array, checked."""
    from scipy.io import loadmat

    require_file(path, what)
    try:
        data = loadmat(path)
    except Exception as err:  # scipy raises ValueError/TypeError/... on a broken file
        raise SGLoraError(f"{path}: not a readable MATLAB file ({err}); expected {what}") from err
    if key not in data:
        raise SGLoraError(f"{path}: field {key!r} missing; expected {what}")
    values = np.asarray(data[key])
    if values.size == 0 or values.dtype.kind not in "iuf" or not np.all(values == np.round(values)) or values.min() < 1:
        raise SGLoraError(f"{path}: field {key!r} is not a vector of positive integers; expected {what}")
    return values.astype(np.int64).ravel()


def build(
    root: str | Path,
    classes: list[str] | None = None,
    max_images: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    on_bad_image: str = "skip",
) -> pa.Table:
    """The Flowers102 manifest.

    - ``classes``: class names from :data:`CLASS_NAMES` to keep; default all 102.
    - ``max_images``: at most this many images per class and split, lowest numbers first.
    - ``template``: description template (``<class name>`` is the flower).
    - ``on_bad_image``: ``skip`` (leave out and list) or ``error``.
    """
    root = require_root(root, "flowers")
    max_images = check_limit(max_images, "max_images")
    labels_path, setid_path = root / "imagelabels.mat", root / "setid.mat"
    labels = _mat_vector(labels_path, "labels", "'labels': one class label 1..102 per image")
    if labels.max() > len(CLASS_NAMES):
        raise SGLoraError(f"{labels_path}: field 'labels' has label {labels.max()}; expected 1..{len(CLASS_NAMES)}")
    names = select_names(CLASS_NAMES, classes, "classes", labels_path)
    slugs = unique_slugs(names, "flowers CLASS_NAMES")
    rows = []
    for split, keys in SPLIT_KEYS.items():
        ids = np.concatenate([_mat_vector(setid_path, k, f"'{k}': 1-based image numbers") for k in keys])
        if ids.max() > len(labels):
            raise SGLoraError(
                f"{setid_path}: field {keys} has image number {ids.max()}; "
                f"expected at most {len(labels)} (the length of 'labels' in {labels_path.name})"
            )
        per_class: dict[str, list[int]] = {}
        for image_no in sorted(set(ids.tolist())):
            name = CLASS_NAMES[labels[image_no - 1] - 1]
            if name in slugs:
                per_class.setdefault(name, []).append(image_no)
        for name, numbers in per_class.items():
            for image_no in numbers[: max_images or None]:
                rows.append(class_row("flowers", slugs[name], name, template, root / "jpg" / f"image_{image_no:05d}.jpg", split))
    rows, bad = filter_images(rows, on_bad_image)
    return with_bad_images(make_manifest(rows), bad)
