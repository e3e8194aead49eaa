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
- *Hybrid* classes sit between two families: "<prefix> <A> <B>" (``"fire terrier lily"``)
  has family A's colour and texture looks and family B's background look and shape (the
  shape of B's member ``prefix``): the word last in the name, as in "fire lily", names the
  shape. Its description names both families, so it points at both families' experts,
  and no expert has its mix of looks (``hybrid_parts``, ``class_look``). A hybrid is
  declared like any class (option ``classes``); its family, where one is needed (the
  bootstrap's, the pretraining captions' "a photo of a lily"), is B.
- The world's size is an option: ``families`` and ``members`` per family. The six named
  families below are the first; further family words and member prefixes are made-up
  words (``world_families``), and families that need more colours, textures or
  backgrounds to keep their looks apart get them (``family_looks``). Families 7 to 16 get
  silhouettes unlike every other at 48 pixels (``SILHOUETTES``): with look-alike shapes
  (regular polygons and stars) a 12-family world's text space grouped look-alike families
  together and failed its premises. The default (6 x 6) is exactly the world it always was.

Everything is seeded; the same seed gives byte-identical PNG and Parquet files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from ..io import SGLoraError, atomic_path, slugify, write_table
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
#: values a world with more families takes, in order, after the ones above (family_looks):
#: the named values keep their indices, so a look indexes one table whatever the world's size
MORE_TEXTURES = ["hatched", "banded", "ringed", "gridded"]
MORE_BACKGROUNDS = ["sky", "grassy", "brick", "slate"]
MORE_BACKGROUND_TONES = [(170, 200, 235), (120, 170, 90), (165, 80, 60), (80, 90, 110)]
ALL_TEXTURES = TEXTURES + MORE_TEXTURES
ALL_BACKGROUNDS = BACKGROUNDS + MORE_BACKGROUNDS
ALL_BACKGROUND_TONES = BACKGROUND_TONES + MORE_BACKGROUND_TONES
SIZES = {"small": 0.11, "medium": 0.17, "large": 0.24}
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27),
             "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
COUNTS = {"one": 1, "two": 2, "three": 3}
DOMAINS = ("studio", "sketch")
#: the largest world: family looks keep their property up to 56 families (8 values of each
#: attribute, ``family_looks``); a member's index bends its family's shape (``_shape_points``)
MAX_FAMILIES, MAX_MEMBERS = 56, 12


def _reserved_words() -> set[str]:
    """Every word the world's texts use besides made-up names: a made-up word must differ from them."""
    import re

    texts = _TEMPLATES + COARSE_LEADS + COLOURS + ALL_TEXTURES + ALL_BACKGROUNDS + list(SIZES) + list(POSITIONS)
    texts += list(COUNTS) + list(FAMILIES) + [p for _, prefixes in FAMILIES.values() for p in prefixes]
    return {w for t in texts for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", t))}


def made_up_word(key: str, taken: set[str]) -> str:
    """A pronounceable lower-case word (consonant-vowel syllables, ``a-z`` only: every
    tokenizer of the world's texts, and CLIP's, spells it) drawn from ``key``, not in ``taken``."""
    letters = ("bdfgklmnprstvz", "aeiou")  # consonant, vowel, consonant, vowel, consonant
    for attempt in range(1000):
        digest = hashlib.sha256(f"{key}/{attempt}".encode()).digest()
        word = "".join(letters[i % 2][b % len(letters[i % 2])] for i, b in enumerate(digest[:5]))
        if word not in taken:
            return word
    raise SGLoraError(f"embedded world: no free made-up word for {key!r}")


def _shape_of(index: int) -> str:
    """The shape of family ``index``: the named families' six, then the ten silhouettes of
    ``SILHOUETTES`` (families 7 to 16: each unlike every other at the world's image size,
    ``tests/test_world.py``), then regular polygons (5, 6, 7, ... sides) and stars (4, 6, 7,
    ... points) in turn. Past 16 families, shapes become hard to tell apart at 48 pixels
    (a heptagon is nearly a disc): a world that large relies on its looks, and its premises
    say whether its text space still groups a family's members."""
    named = [shape for shape, _ in FAMILIES.values()]
    if index < len(named):
        return named[index]
    if index < len(named) + len(SILHOUETTES):
        return list(SILHOUETTES)[index - len(named)]
    j = index - len(named) - len(SILHOUETTES)
    points = 4 + j // 2
    return f"polygon{5 + j // 2}" if j % 2 == 0 else f"star{points + (points >= 5)}"


def _heart(n: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return [(float(a) / 17, float(-b - 2.5) / 15) for a, b in zip(x, y)]


def _crescent(n: int = 12) -> list[tuple[float, float]]:
    outer = [(np.cos(a), np.sin(a)) for a in np.linspace(np.pi / 3, 5 * np.pi / 3, n)]
    inner = [(0.5 + 0.866 * np.cos(a), 0.866 * np.sin(a)) for a in np.linspace(3 * np.pi / 2, np.pi / 2, n)[1:-1]]
    return [(float(x), float(y)) for x, y in outer + inner]


#: outlines of the shapes of families 7 to 16, in units of the object's radius (x right,
#: y down), chosen to differ from each other and from the named families' at 48 pixels
SILHOUETTES: dict[str, list[tuple[float, float]]] = {
    "crescent": _crescent(),
    "arrow": [(-1, -0.3), (0.1, -0.3), (0.1, -0.85), (1, 0), (0.1, 0.85), (0.1, 0.3), (-1, 0.3)],
    "hourglass": [(-0.8, -1), (0.8, -1), (0.15, 0), (0.8, 1), (-0.8, 1), (-0.15, 0)],
    "ell": [(-0.9, -1), (-0.25, -1), (-0.25, 0.35), (0.9, 0.35), (0.9, 1), (-0.9, 1)],
    "tee": [(-1, -1), (1, -1), (1, -0.4), (0.3, -0.4), (0.3, 1), (-0.3, 1), (-0.3, -0.4), (-1, -0.4)],
    "bar": [(-1, -0.33), (1, -0.33), (1, 0.33), (-1, 0.33)],
    "heart": _heart(),
    "chevron": [(-1, -0.9), (-0.5, -0.9), (0, 0.15), (0.5, -0.9), (1, -0.9), (0, 1)],
    "semicircle": [(float(np.cos(a)), float(0.5 + np.sin(a))) for a in np.linspace(np.pi, 2 * np.pi, 13)],
    "bolt": [(-0.15, -1), (0.65, -1), (0.15, -0.2), (0.6, -0.2), (-0.45, 1), (-0.15, 0.15), (-0.6, 0.15)],
}


@lru_cache(maxsize=1)
def _largest_world() -> dict[str, tuple[str, list[str]]]:
    """The world of MAX_FAMILIES x MAX_MEMBERS. Words are made up in one fixed order (family
    words, then member prefixes family by family), so every smaller world is a corner of this
    one: a class means the same in a world of any size."""
    taken = _reserved_words()
    words = list(FAMILIES)
    for i in range(len(FAMILIES), MAX_FAMILIES):
        words.append(made_up_word(f"family/{i}", taken))
        taken.add(words[-1])
    table = {}
    for i, fam in enumerate(words):
        prefixes = list(FAMILIES[fam][1]) if fam in FAMILIES else []
        for j in range(len(prefixes), MAX_MEMBERS):
            prefixes.append(made_up_word(f"member/{i}/{j}", taken))
            taken.add(prefixes[-1])
        table[fam] = (_shape_of(i), prefixes)
    return table


def check_size(families: int, members: int) -> None:
    """Check the embedded world's numbers of families and members against their bounds."""
    if not 2 <= families <= MAX_FAMILIES:
        raise SGLoraError(f"embedded world: option families={families} must be in [2, {MAX_FAMILIES}]")
    if not 1 <= members <= MAX_MEMBERS:
        raise SGLoraError(f"embedded world: option members={members} must be in [1, {MAX_MEMBERS}]")


def world_families(families: int = 6, members: int = 6) -> dict[str, tuple[str, list[str]]]:
    """family word -> (shape, member prefixes) of a world with ``families`` x ``members``
    classes: the named families first (``FAMILIES``), then made-up ones."""
    check_size(families, members)
    return {fam: (shape, prefixes[:members]) for fam, (shape, prefixes) in list(_largest_world().items())[:families]}


def class_names(families: int = 6, members: int = 6) -> list[str]:
    """Every class name of a world with this many families and members."""
    return [f"{p} {fam}" for fam, (_, prefixes) in world_families(families, members).items() for p in prefixes]


@lru_cache(maxsize=1)
def _class_index() -> dict[str, tuple[str, int]]:
    """class name -> (family word, member index), over the largest world."""
    return {f"{p} {fam}": (fam, j) for fam, (_, prefixes) in _largest_world().items() for j, p in enumerate(prefixes)}


def family_word(name: str) -> str | None:
    """The family word a name ends with (``"fox terrier"`` -> ``"terrier"``), ``None`` if none."""
    last = name.rsplit(" ", 1)[-1]
    return last if " " in name and last in _largest_world() else None


def hybrid_parts(name: str, families: int = MAX_FAMILIES, members: int = MAX_MEMBERS) -> tuple[str, str, int] | None:
    """``(A, B, member)`` of a hybrid class "<prefix> <A> <B>" of the world of ``families`` x
    ``members``: A gives its colour and texture looks, B its background look and shape, and
    ``member`` (the index of ``prefix`` among B's members) bends B's shape. ``None`` for a
    name of another form; an error (naming the option ``classes``) for a three-word name
    that is not a hybrid of this world."""
    words = name.split(" ")
    if len(words) != 3:
        return None
    prefix, a, b = words
    fams = world_families(min(families, MAX_FAMILIES), min(members, MAX_MEMBERS))
    where = f"embedded world option classes: hybrid {name!r} (\"<prefix> <A> <B>\": A's colour and texture, B's background and shape)"
    for fam in (a, b):
        if fam not in fams:
            short = list(fams)[:6]
            raise SGLoraError(f"{where}: {fam!r} is not a family of the world; families: {short}"
                              f"{' ...' if len(fams) > 6 else ''}")
    if a == b:
        raise SGLoraError(f"{where}: names the family {a!r} twice; a hybrid mixes two different families")
    if prefix not in fams[b][1]:
        raise SGLoraError(f"{where}: {prefix!r} is not a member of family {b!r} (whose shape it takes); "
                          f"members: {fams[b][1]}")
    return a, b, fams[b][1].index(prefix)


def family_of(name: str, families: int = MAX_FAMILIES, members: int = MAX_MEMBERS) -> str:
    """The family of a class of the world of ``families`` x ``members`` (any world by default);
    of a hybrid, the family whose shape it has (B of ``hybrid_parts``)."""
    hybrid = hybrid_parts(name, families, members)
    if hybrid:
        return hybrid[1]
    fam, j = _class_index().get(name, (None, None))
    if fam is None or list(_largest_world()).index(fam) >= families or j >= members:
        size = "" if (families, members) == (6, 6) else f" of {families} families x {members} members"
        raise SGLoraError(f"embedded world: {name!r} is not a class of the world{size}; classes: "
                          f"{class_names(min(families, 6), min(members, 6))}{' ...' if size else ''}")
    return fam


def check_classes(classes: list[str], families: int = 6, members: int = 6) -> dict[str, str]:
    """class -> family (``family_of``) of ``classes`` of the world of ``families`` x ``members``
    (``generate_world``'s); an error names the first that is neither a class nor a hybrid of it."""
    check_size(families, members)
    return {name: family_of(name, families, members) for name in classes}


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


def affine_permutations(n: int, count: int) -> list[tuple[int, ...]]:
    """``count`` of the maps x -> a x + b (a != 0) of the finite field of ``n`` elements (a
    prime, or 8), the identity first: two of them agree in at most one point (a x + b =
    a' x + b' has one solution when a != a', none when only b differs), for up to
    ``n (n - 1)`` permutations."""
    if n == 8:  # GF(2^3): polynomials over GF(2) modulo x^3 + x + 1; addition is XOR
        def mul(a, b):
            r = 0
            for i in range(3):
                if b >> i & 1:
                    r ^= a << i
            for i in (4, 3):
                if r >> i & 1:
                    r ^= 0b1011 << (i - 3)
            return r

        def add(a, b):
            return a ^ b
    elif n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1)):
        def mul(a, b):
            return a * b % n

        def add(a, b):
            return (a + b) % n
    else:
        raise SGLoraError(f"affine permutations: {n} is not a prime or 8")
    if count > n * (n - 1):
        raise SGLoraError(f"affine permutations: at most {n * (n - 1)} of {n} points, asked for {count}")
    maps = [(1, 0)] + [(a, b) for a in range(1, n) for b in range(n) if (a, b) != (1, 0)]
    return [tuple(add(mul(a, x), b) for x in range(n)) for a, b in maps[:count]]


def _agree_at_most(perms: list[tuple[int, ...]], most: int) -> bool:
    return all(sum(x == y for x, y in zip(a, b)) <= most for i, a in enumerate(perms) for b in perms[:i])


def look_permutations(base: int, count: int, seed: int, salt: int, most: int = 8) -> list[tuple[int, ...]]:
    """``count`` looks of one attribute that agree pairwise in at most one value, on the
    fewest values from ``base`` on (at most ``most``): pairwise derangements while ``count``
    fits (``spread_permutations``), the greedy search on up to 4 values, else the affine
    maps of a field of that many values (5, 7, 8)."""
    for n in range(base, most + 1):
        if count <= n or (n <= 4 and count <= n * (n - 1)):
            perms = spread_permutations(n, count, seed, salt=salt)
            if _agree_at_most(perms, 1):
                return perms
        elif n in (5, 7, 8) and count <= n * (n - 1):
            return affine_permutations(n, count)
    raise SGLoraError(f"embedded world: {count} families need more than {most} values of an attribute")


def family_looks(seed: int, families: int = 6) -> dict[str, FamilyLook]:
    """How each family of a world of ``families`` renders colour, texture and background,
    drawn from the world seed. The first family keeps the canonical look; the others are
    chosen so that families agree on as few attribute values as possible: for the 6 named
    families, no two render any colour alike (8 colours) and two share the look of at most
    one of the 4 textures and of at most one of the 4 backgrounds (``spread_permutations``).
    Any world keeps the second property for every attribute, taking more textures and
    backgrounds (``MORE_TEXTURES``, ``MORE_BACKGROUNDS``) where 4 cannot (``look_permutations``):
    a look's length is the number of values of that attribute in the world."""
    fams = list(world_families(families, 1))
    per_attr = [look_permutations(n, len(fams), seed, salt=i, most=len(table))
                for i, (n, table) in enumerate(((len(COLOURS), COLOURS), (len(TEXTURES), ALL_TEXTURES),
                                                (len(BACKGROUNDS), ALL_BACKGROUNDS)))]
    return {fam: FamilyLook(per_attr[0][i], per_attr[1][i], per_attr[2][i]) for i, fam in enumerate(fams)}


#: how a member's index bends its family's shape (``generate_world(bend=...)``): ``linear``,
#: member v by v steps (the default world's); ``alternating``, by 0, -1, 1, -2, 2, ... steps, so
#: no member is more than half the family's size from the experts (members 0 and 1). With
#: ``linear``, the far members of an 8-member family look more like another family's experts
#: than their own (tests/test_world.py), and a 12-family world's description premise held for
#: one pretraining seed only.
BENDS = ("linear", "alternating")


def member_bend(index: int, bend: str = "linear") -> int:
    """The steps by which member ``index`` of a family bends its shape (:data:`BENDS`)."""
    if bend not in BENDS:
        raise SGLoraError(f"embedded world option bend: {bend!r} is not one of {list(BENDS)}")
    return index if bend == "linear" else (-1) ** index * ((index + 1) // 2)


def class_look(name: str, seed: int, families: int = 6, members: int = 6,
               looks: dict[str, FamilyLook] | None = None, bend: str = "linear") -> tuple[FamilyLook, str, int]:
    """How class ``name`` of a world is drawn: its look (indices into the tables), its shape
    and the steps that bend the shape (:func:`member_bend` of its member index). A family's
    member: the family's look and shape. A hybrid "<prefix> <A> <B>": A's colour and texture
    looks, B's background look, B's shape bent as B's member ``prefix``. ``looks``:
    ``family_looks(seed, families)``, when at hand."""
    looks = looks or family_looks(seed, families)
    hybrid = hybrid_parts(name, families, members)
    if hybrid:
        a, b, variant = hybrid
        look = FamilyLook(colour=looks[a].colour, texture=looks[a].texture, background=looks[b].background)
        return look, world_families(families, members)[b][0], member_bend(variant, bend)
    fam = family_of(name, families, members)
    shape, prefixes = world_families(families, members)[fam]
    return looks[fam], shape, member_bend(prefixes.index(name[: -len(fam) - 1]), bend)


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
    if kind in SILHOUETTES:  # families 7 to 16: stretched by the member, as the polygons
        sx, sy = 1.0 + 0.05 * variant, 1.0 - 0.03 * variant
        return [(cx + r * sx * x, cy + r * sy * y) for x, y in SILHOUETTES[kind]]
    if kind.startswith("polygon"):  # made-up families: regular polygons, stretched by the member
        sides, sx, sy = int(kind[7:]), 1.0 + 0.05 * variant, 1.0 - 0.03 * variant
        return [(cx + r * sx * np.cos(a), cy + r * sy * np.sin(a))
                for a in np.linspace(0, 2 * np.pi, sides, endpoint=False) - np.pi / 2]
    if kind.startswith("star"):  # and stars, their inner radius set by the member
        points, inner = int(kind[4:]), 0.42 + 0.04 * variant
        return [(cx + (r if k % 2 == 0 else r * inner) * np.cos(np.pi * k / points - np.pi / 2),
                 cy + (r if k % 2 == 0 else r * inner) * np.sin(np.pi * k / points - np.pi / 2))
                for k in range(2 * points)]
    raise ValueError(kind)


def _texture(kind: int, size: int, colour: tuple[int, int, int], scale: int) -> Image.Image:
    """A fill image in the object's colour: 0 plain, 1 stripes, 2 dots, 3 checks (the named
    textures), then 4 vertical lines, 5 horizontal bands, 6 rings, 7 a grid (MORE_TEXTURES)."""
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
    elif kind == 3:
        mask = (xx // p + yy // p) % 2 == 0
    elif kind == 4:
        mask = xx // p % 2 == 0
    elif kind == 5:
        mask = yy // p % 2 == 0
    elif kind == 6:
        mask = np.hypot(xx - size / 2, yy - size / 2).astype(int) // p % 2 == 0
    else:
        mask = (xx % (3 * p) < p) | (yy % (3 * p) < p)
    arr = np.where(mask[..., None], dark, base)
    return Image.fromarray(arr.astype(np.uint8))


def render(attrs: dict, shape: str, variant: int, look: FamilyLook, domain: str,
           image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image at 4x and downsample (anti-aliasing, deterministic)."""
    scale = 4
    s = image_size * scale
    bg = np.array(ALL_BACKGROUND_TONES[look.background[ALL_BACKGROUNDS.index(attrs["background"])]], np.float32)
    colour = PALETTE[look.colour[COLOURS.index(attrs["colour"])]]
    jitter = rng.normal(0, 8, 3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
    canvas = Image.new("RGB", (s, s), tuple(int(x) for x in bg))
    fill = _texture(look.texture[ALL_TEXTURES.index(attrs["texture"])], s, colour, scale)
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
    lead = COARSE_LEADS[rng.integers(len(COARSE_LEADS))]
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
#: how a pretraining caption starts
COARSE_LEADS = ["a photo of a", "an image of a", "a picture of a", "a photo of the"]


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
    image of a class of the world with its coarse caption. A hybrid's images and captions are
    left out: the backbone never sees a hybrid (a between-family task is new to it, as to
    the experts), and adding hybrids to a world changes no pair, so no other result."""
    import pyarrow.parquet as pq

    names = {n: i for i, n in enumerate(list(_largest_world()) + list(_class_index()))}  # ids of any world's names
    counts, sizes, positions = list(COUNTS), list(SIZES), list(POSITIONS)

    def idx(values, v):
        return -1 if v is None else values.index(v)

    images, texts, vocab, said, truth = [], [], [], [], []
    for world in worlds:
        split = {r["image_path"]: r["split"] for r in pq.read_table(Path(world) / "manifest.raw.parquet").to_pylist()}
        for r in pq.read_table(Path(world) / "captions.parquet").to_pylist():
            if hybrid_parts(r["class_name"]):
                continue
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
    classes: list[str] | None = None,
    domain: str = "studio",
    seed: int = 0,
    images_per_class: int = 120,
    test_per_class: int = 40,
    image_size: int = 48,
    template: str = "a photo of a <class name>",
    families: int = 6,
    members: int = 6,
    bend: str = "linear",
    progress: bool = True,
) -> dict:
    """Write the world's images and tables under ``out_dir``:

    - ``images/<task>/<i>.png``
    - ``manifest.raw.parquet``: the task manifest, captions empty (the caption step fills them)
    - ``captions.parquet``: ``image_path, captions, coarse_caption`` (and what it mentions:
      ``coarse_name``, ``coarse_count``, ``coarse_size``, ``coarse_position``), the class,
      family and attributes;
      the synthetic captioning backend reads its captions from here.

    The world has ``families`` x ``members`` classes (``world_families``); ``classes`` picks
    the ones to draw (default: all), hybrids of two families among them (``hybrid_parts``). Each class's images depend only on (seed, domain, class
    name, world size, bend), so adding a class changes no other class's files. ``bend``: how a
    member's index bends its family's shape (:data:`BENDS`).
    """
    from tqdm import tqdm

    if domain not in DOMAINS:
        raise SGLoraError(f"embedded world: domain {domain!r} is not one of {DOMAINS}")
    if not 0 < test_per_class < images_per_class:
        raise SGLoraError(
            f"embedded world: test_per_class={test_per_class} must be in (0, images_per_class={images_per_class})"
        )
    member_bend(0, bend)  # an unknown bend: an error naming the option, before any file
    classes = class_names(families, members) if classes is None else classes
    fams = check_classes(classes, families, members)
    out_dir = Path(out_dir)
    looks = family_looks(seed, families)
    first = next(iter(looks.values()))
    colours, textures = COLOURS[: len(first.colour)], ALL_TEXTURES[: len(first.texture)]
    backgrounds = ALL_BACKGROUNDS[: len(first.background)]
    rows, caption_rows = [], []
    for name in tqdm(classes, desc=f"world[{domain}]", disable=not progress):
        fam = fams[name]
        look, shape, variant = class_look(name, seed, families, members, looks, bend)
        task = slugify(name)
        rng = np.random.default_rng(_class_seed(seed, domain, name))
        img_dir = out_dir / "images" / task
        img_dir.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            attrs = {
                "colour": colours[rng.integers(len(colours))],
                "texture": textures[rng.integers(len(textures))],
                "background": backgrounds[rng.integers(len(backgrounds))],
                "size": list(SIZES)[rng.integers(len(SIZES))],
                "position": list(POSITIONS)[rng.integers(len(POSITIONS))],
                "count": list(COUNTS)[rng.integers(len(COUNTS))],
            }
            img = render(attrs, shape, variant, look, domain, image_size, rng)
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
