"""The embedded benchmark: a synthetic image-caption world with a known semantic structure.

Why it looks the way it does:

- Classes come in *families* whose members share a word ("scottish terrier", "fox
  terrier"), so a text encoder can relate them, as dog breeds share "terrier".
- Every image has fine-grained attributes (colour, texture, background, size, position,
  count) and 4 captions that describe them, like the paper's Qwen2-VL captions.
- How colour, texture and background *look* is family-specific: each family renders the
  colour word "red" (and each texture, each background) with its own palette. So an
  expert LoRA that learned the mapping for one class helps the other members of its
  family and misleads other families: the hypothesis SG-LoRA relies on.
- Size, position and count look the same everywhere. The backbone is pretrained on
  coarse captions that mention only those and the class name, the way web CLIP knows
  class names but not a task's fine details. Zero-shot fine-grained retrieval inside a
  class is therefore above chance but far from solved: the headroom a LoRA can fill.
- A second domain (``sketch``: outlines, hatching, noise) draws the same attributes in
  another style, for cross-dataset experiments.

Everything is seeded; the same seed gives byte-identical PNG and Parquet files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from .io import SGLoraError, atomic_path, slugify, write_table
from .manifest import describe, make_manifest, write_manifest

#: family word -> (shape drawn for the family, member prefixes). The full class name is
#: "<prefix> <family word>".
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "terrier": ("box", ["scottish", "boston", "yorkshire", "bull", "fox", "cairn"]),
    "lily": ("star", ["tiger", "water", "calla", "peace", "fire", "easter"]),
    "shorthair": ("disc", ["british", "american", "exotic", "oriental", "colorpoint", "european"]),
    "sparrow": ("triangle", ["house", "song", "tree", "field", "swamp", "savannah"]),
    "beetle": ("cross", ["stag", "dung", "rhinoceros", "ground", "longhorn", "click"]),
    "oak": ("diamond", ["cork", "live", "pin", "bur", "post", "black"]),
}
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"]
PALETTE = [
    (220, 40, 40), (240, 140, 20), (235, 215, 30), (40, 170, 60),
    (40, 80, 220), (140, 50, 180), (240, 120, 180), (120, 75, 35),
]
TEXTURES = ["plain", "striped", "dotted", "checkered"]
BACKGROUNDS = ["white", "gray", "dark", "sandy"]
BACKGROUND_TONES = [(235, 235, 235), (140, 140, 140), (30, 30, 40), (215, 195, 150)]
SIZES = {"small": 0.11, "medium": 0.17, "large": 0.24}
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27),
             "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
COUNTS = {"one": 1, "two": 2, "three": 3}
DOMAINS = ("studio", "sketch")


def class_names() -> list[str]:
    return [f"{p} {fam}" for fam, (_, prefixes) in FAMILIES.items() for p in prefixes]


def family_of(name: str) -> str:
    for fam in FAMILIES:
        if name.endswith(" " + fam):
            return fam
    raise SGLoraError(f"embedded world: {name!r} is not a class of the world; classes: {class_names()}")


@dataclass(frozen=True)
class FamilyLook:
    """How a family renders the family-specific attributes (indices into the tables)."""

    colour: tuple[int, ...]
    texture: tuple[int, ...]
    background: tuple[int, ...]


def spread_permutations(n: int, count: int, seed: int, salt: int = 0, restarts: int = 64) -> list[tuple[int, ...]]:
    """``count`` permutations of ``range(n)``, the first the identity, that agree with each
    other in as few positions as possible: pairwise derangements (rows of a Latin square)
    while ``count <= n``; beyond that, at most one shared position per pair where one can
    be found (transversals). Greedy over a seeded order of all ``n!`` permutations, the
    best of ``restarts`` orders by (largest pairwise agreement, total agreement)."""
    import itertools

    perms = np.array(list(itertools.permutations(range(n))))
    rng = np.random.default_rng([seed, salt, n, count])
    best, best_key = None, None
    for _ in range(1 if count <= n else restarts):  # a Latin rectangle always extends: one greedy pass suffices
        order = perms[rng.permutation(len(perms))]
        chosen = [np.arange(n)]
        for _ in range(1, count):
            agree = np.stack([(order == c).sum(1) for c in chosen], 1)
            chosen.append(order[np.argmin(agree.max(1) * n * count + agree.sum(1))])
        pair = [int((a == b).sum()) for i, a in enumerate(chosen) for b in chosen[:i]]
        key = (max(pair, default=0), sum(pair))
        if best_key is None or key < best_key:
            best, best_key = chosen, key
    return [tuple(int(x) for x in c) for c in best]


def family_looks(seed: int) -> dict[str, FamilyLook]:
    """How each family renders colour, texture and background, drawn from the world seed.
    The first family keeps the canonical look; the others are chosen so that families
    agree on as few attribute values as possible: no two families render any colour alike
    (8 colours, 6 families), and two families share the look of at most one of the 4
    textures and of at most one of the 4 backgrounds (``spread_permutations``)."""
    fams = list(FAMILIES)
    per_attr = [spread_permutations(n, len(fams), seed, salt=i)
                for i, n in enumerate((len(COLOURS), len(TEXTURES), len(BACKGROUNDS)))]
    return {fam: FamilyLook(per_attr[0][i], per_attr[1][i], per_attr[2][i]) for i, fam in enumerate(fams)}


def _shape_points(kind: str, variant: int, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon of a family's shape; ``variant`` (the member index) changes its proportions
    a little, so members of a family are told apart by the backbone while the family's
    shape stays what the members have in common (and what their descriptions share)."""
    if kind == "box":
        w, h = r * (1.0 + 0.06 * variant), r * (1.0 - 0.04 * variant)
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]
    if kind == "star":
        points, inner = 5, 0.42 + 0.04 * variant
        out = []
        for k in range(2 * points):
            rad = r if k % 2 == 0 else r * inner
            a = np.pi * k / points - np.pi / 2
            out.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        return out
    if kind == "disc":
        sx, sy = 1.0 + 0.05 * variant, 1.0 - 0.03 * variant
        return [(cx + r * sx * np.cos(a), cy + r * sy * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 24, endpoint=False)]
    if kind == "triangle":
        tilt = 0.12 * variant
        return [(cx + r * np.cos(a + tilt), cy + r * np.sin(a + tilt))
                for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
    if kind == "cross":
        t = r * (0.28 + 0.025 * variant)
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    if kind == "diamond":
        w = r * (0.55 + 0.04 * variant)
        return [(cx, cy - r), (cx + w, cy), (cx, cy + r), (cx - w, cy)]
    raise ValueError(kind)


def _texture(kind: int, size: int, colour: tuple[int, int, int], scale: int) -> Image.Image:
    """A fill image: 0 plain, 1 stripes, 2 dots, 3 checks, in the object's colour."""
    base = np.array(colour, dtype=np.float32)
    dark = base * 0.35
    yy, xx = np.mgrid[0:size, 0:size]
    p = 3 * scale
    if kind == 0:
        mask = np.zeros((size, size), bool)
    elif kind == 1:
        mask = (xx + yy) // p % 2 == 0
    elif kind == 2:
        mask = ((xx % (2 * p) - p) ** 2 + (yy % (2 * p) - p) ** 2) < (0.6 * p) ** 2
    else:
        mask = (xx // p + yy // p) % 2 == 0
    arr = np.where(mask[..., None], dark, base)
    return Image.fromarray(arr.astype(np.uint8))


def render(attrs: dict, shape: str, variant: int, look: FamilyLook, domain: str,
           image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image at 4x and downsample (anti-aliasing, deterministic)."""
    scale = 4
    s = image_size * scale
    bg = np.array(BACKGROUND_TONES[look.background[BACKGROUNDS.index(attrs["background"])]], np.float32)
    colour = PALETTE[look.colour[COLOURS.index(attrs["colour"])]]
    jitter = rng.normal(0, 8, 3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
    canvas = Image.new("RGB", (s, s), tuple(int(x) for x in bg))
    fill = _texture(look.texture[TEXTURES.index(attrs["texture"])], s, colour, scale)
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    n = COUNTS[attrs["count"]]
    r = SIZES[attrs["size"]] * s * (0.8 if n > 1 else 1.0)
    cx, cy = (c * s for c in POSITIONS[attrs["position"]])
    offsets = {1: [(0, 0)], 2: [(-1, 0), (1, 0)], 3: [(-1, 0.6), (1, 0.6), (0, -0.9)]}[n]
    spread = r * 1.15 if n > 1 else 0
    for ox, oy in offsets:
        jx, jy = rng.normal(0, 0.04 * s, 2)
        px = float(np.clip(cx + ox * spread + jx, r, s - r))
        py = float(np.clip(cy + oy * spread + jy, r, s - r))
        pts = _shape_points(shape, variant, px, py, r)
        if domain == "sketch":
            draw.polygon(pts, outline=255, width=max(2, int(r * 0.3)))
        else:
            draw.polygon(pts, fill=255)
    canvas.paste(fill, (0, 0), mask)
    img = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    if domain == "sketch":
        arr = np.asarray(img, np.float32)
        arr = arr + rng.normal(0, 18, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)
    return img


_TEMPLATES = [
    "{count_word} {size} {colour} {name} with a {texture} pattern on the {position} of a {background} background",
    "a {background} scene with {count_word} {colour} {name} in the {position}, {size} and {texture}",
    "{count_word} {texture} {colour} {name}, {size}, placed {position} against a {background} backdrop",
    "the {colour} {name} is {size} and {texture}; there is {count_word} of them on the {position}, background {background}",
    "close-up of {count_word} {size} {name} colored {colour} with {texture} skin near the {position} on {background}",
    "{colour} and {texture} {name}: {count_word} {size} at the {position} over a {background} ground",
]


def captions_for(attrs: dict, name: str, rng: np.random.Generator, n: int = 4) -> list[str]:
    """``n`` diverse fine-grained captions of one image (distinct templates)."""
    picks = rng.choice(len(_TEMPLATES), size=n, replace=False)
    count_word = {"one": "one", "two": "two", "three": "three"}[attrs["count"]]
    return [_TEMPLATES[i].format(name=name, count_word=count_word, **attrs) for i in picks]


def coarse_caption(attrs: dict, name: str, rng: np.random.Generator) -> tuple[str, dict]:
    """The backbone's pretraining text: the class name (or, as web captions often do, just
    the family word: "a photo of a lily") and, sometimes, the attributes that look the same
    in every family (size, position, count). Never colour, texture or background: those
    are the fine details a task's LoRA has to learn.

    Returns the text and what it mentions (``name``: class or family; ``count``, ``size``,
    ``position``: the value or ``None``), so pretraining knows which images it describes."""
    lead = ["a photo of a", "an image of a", "a picture of a", "a photo of the"][rng.integers(4)]
    if rng.random() < FAMILY_CAPTION_SHARE:
        name = family_of(name)
    said = {"name": name, "count": None, "size": None, "position": None}
    text = f"{lead} {name}"
    if rng.random() < 0.7:
        said["count"], said["size"] = attrs["count"], attrs["size"]
        text = f"{lead} {attrs['count']} {attrs['size']} {name}"
    if rng.random() < 0.7:
        said["position"] = attrs["position"]
        text += f" on the {attrs['position']}"
    return text, said


#: share of pretraining captions that name only the family ("a photo of a sparrow")
FAMILY_CAPTION_SHARE = 0.4


@dataclass
class PretrainingPairs:
    """The backbone's (image, coarse caption) training pairs of one or more worlds, with
    what each caption says and each image is, so a caption can be a positive of every
    image it truthfully describes (not only of its own)."""

    images: list[str]
    texts: list[str]
    vocab: list[str]  #: every text the pipeline will encode (fine captions too): trains the tokenizer
    said: np.ndarray  #: (N, 4) ids a caption mentions: name, count, size, position (-1 = not mentioned)
    truth: np.ndarray  #: (N, 5) ids of what an image is: class, family, count, size, position

    def describes(self, images, captions):
        """Bool tensor images x captions: caption j names the image's class or family and
        every attribute it mentions matches."""
        import torch

        t = torch.as_tensor(self.truth)[images]  # B x 5
        c = torch.as_tensor(self.said)[captions]  # B x 4
        name = (c[None, :, 0] == t[:, None, 0]) | (c[None, :, 0] == t[:, None, 1])
        ok = name
        for k in range(1, 4):
            ok = ok & ((c[None, :, k] < 0) | (c[None, :, k] == t[:, None, k + 1]))
        return ok


def pretraining_pairs(worlds: list[str | Path]) -> PretrainingPairs:
    """The training pairs of ``worlds`` (folders written by ``generate_world``): every train
    image with its coarse caption."""
    import pyarrow.parquet as pq

    names = {n: i for i, n in enumerate(list(FAMILIES) + class_names())}
    counts, sizes, positions = list(COUNTS), list(SIZES), list(POSITIONS)

    def idx(values, v):
        return -1 if v is None else values.index(v)

    images, texts, vocab, said, truth = [], [], [], [], []
    for world in worlds:
        split = {r["image_path"]: r["split"] for r in pq.read_table(Path(world) / "manifest.raw.parquet").to_pylist()}
        for r in pq.read_table(Path(world) / "captions.parquet").to_pylist():
            vocab += list(r["captions"]) + [r["coarse_caption"]]
            if split[r["image_path"]] != "train":
                continue
            images.append(r["image_path"])
            texts.append(r["coarse_caption"])
            said.append([names[r["coarse_name"]], idx(counts, r["coarse_count"]), idx(sizes, r["coarse_size"]),
                         idx(positions, r["coarse_position"])])
            truth.append([names[r["class_name"]], names[r["family"]], counts.index(r["count"]), sizes.index(r["size"]),
                          positions.index(r["position"])])
    return PretrainingPairs(images, texts, vocab, np.array(said, np.int64).reshape(-1, 4),
                            np.array(truth, np.int64).reshape(-1, 5))


def _class_seed(seed: int, domain: str, name: str) -> list[int]:
    digest = hashlib.sha256(f"{domain}/{name}".encode()).digest()
    return [seed, int.from_bytes(digest[:4], "little")]


def generate_world(
    out_dir: str | Path,
    classes: list[str],
    domain: str = "studio",
    seed: int = 0,
    images_per_class: int = 120,
    test_per_class: int = 40,
    image_size: int = 48,
    template: str = "a photo of a <class name>",
    progress: bool = True,
) -> dict:
    """Write the world's images and tables under ``out_dir``:

    - ``images/<task>/<i>.png``
    - ``manifest.raw.parquet``: the task manifest, captions empty (the caption step fills them)
    - ``captions.parquet``: ``image_path, captions, coarse_caption`` (and what it mentions:
      ``coarse_name``, ``coarse_count``, ``coarse_size``, ``coarse_position``), the class,
      family and attributes;
      the synthetic captioning backend reads its captions from here.

    Each class's images depend only on (seed, domain, class name), so adding a class
    changes no other class's files.
    """
    from tqdm import tqdm

    if domain not in DOMAINS:
        raise SGLoraError(f"embedded world: domain {domain!r} is not one of {DOMAINS}")
    if not 0 < test_per_class < images_per_class:
        raise SGLoraError(
            f"embedded world: test_per_class={test_per_class} must be in (0, images_per_class={images_per_class})"
        )
    out_dir = Path(out_dir)
    looks = family_looks(seed)
    rows, caption_rows = [], []
    for name in tqdm(classes, desc=f"world[{domain}]", disable=not progress):
        fam = family_of(name)
        shape, prefixes = FAMILIES[fam]
        variant = prefixes.index(name[: -len(fam) - 1])
        task = slugify(name)
        rng = np.random.default_rng(_class_seed(seed, domain, name))
        img_dir = out_dir / "images" / task
        img_dir.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            attrs = {
                "colour": COLOURS[rng.integers(len(COLOURS))],
                "texture": TEXTURES[rng.integers(len(TEXTURES))],
                "background": BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
                "size": list(SIZES)[rng.integers(len(SIZES))],
                "position": list(POSITIONS)[rng.integers(len(POSITIONS))],
                "count": list(COUNTS)[rng.integers(len(COUNTS))],
            }
            img = render(attrs, shape, variant, looks[fam], domain, image_size, rng)
            path = img_dir / f"{i:04d}.png"
            with atomic_path(path) as tmp:
                img.save(tmp, format="PNG")
            split = "test" if i >= images_per_class - test_per_class else "train"
            rows.append(dict(dataset=f"embedded-{domain}", task=task, task_name=name, class_name=name,
                             description=describe(name, template), image_path=str(path),
                             captions=[], split=split))
            coarse, said = coarse_caption(attrs, name, rng)
            caption_rows.append(dict(image_path=str(path), captions=captions_for(attrs, name, rng),
                                     coarse_caption=coarse, coarse_name=said["name"], coarse_count=said["count"],
                                     coarse_size=said["size"], coarse_position=said["position"],
                                     class_name=name, family=fam, domain=domain, **attrs))
    write_manifest(out_dir / "manifest.raw.parquet", make_manifest(rows))
    caption_rows.sort(key=lambda r: r["image_path"])
    write_table(out_dir / "captions.parquet", pa.Table.from_pylist(caption_rows))
    return {"classes": len(classes), "images": len(rows), "domain": domain}
