"""The built-in ``emoji`` dataset: about 1,900 colour emoji in 16 visually distinct classes.

Images come from the colour bitmaps (CBDT/CBLC PNG strikes, 136x128 px) of Debian's Noto Color Emoji
font; names, groups and subgroups come from Unicode's ``emoji-test.txt`` (package ``unicode-data``).
We keep the ``fully-qualified`` lines, drop skin-tone variants (U+1F3FB..U+1F3FF) unless asked, and
drop anything the font has no bitmap for. Each bitmap is composited onto white, padded to a centred
square and resized with Lanczos. Every subgroup maps to exactly one of the 16 classes in
:data:`CLASSES`, which is the documentation of the mapping.

The rendered set is cached: the native 136 px squares once, and each requested size derived from them,
under ``$JIT_CACHE_DIR`` (default ``~/.cache/jit-diffusion``) in ``emoji/``. A fixed ~10% of each
class is held out for evaluation (split ``heldout``); the choice depends only on the code points.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..core.fileio import atomic_write_path

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
DEFAULT_EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
FONT_ENV = "JIT_EMOJI_FONT"
EMOJI_TEST_ENV = "JIT_EMOJI_TEST"
CACHE_ENV = "JIT_CACHE_DIR"
CACHE_VERSION = 1  # bump when rendering changes; the class mapping is part of the cache fingerprint
SPLITS = ("train", "heldout", "all")
HELDOUT_FRACTION = 0.1
SKIN_TONE_MODIFIERS = range(0x1F3FB, 0x1F400)
VARIATION_SELECTOR_16 = 0xFE0F

# class name -> the emoji-test.txt subgroups it holds (sizes without skin tones, Unicode 15.0).
# Chosen to look different at 32-64 px: yellow faces, busts vs full figures, animals, green plants,
# food, scenes and vehicles, objects, boxed symbols, plain coloured shapes and flags.
CLASSES: dict[str, tuple[str, ...]] = {
    # smiling, laughing, loving, tongue-out yellow faces (42)
    "faces-happy": ("face-smiling", "face-affection", "face-tongue", "face-hand", "face-hat", "face-glasses"),
    # neutral, sleepy, sick, worried, angry faces and costume faces (clown, ghost, alien, robot) (73)
    "faces-other": (
        "face-neutral-skeptical", "face-sleepy", "face-unwell", "face-concerned", "face-negative", "face-costume",
    ),
    # hand gestures and body parts (61)
    "hands": (
        "hand-fingers-open", "hand-fingers-partial", "hand-single-finger", "hand-fingers-closed", "hands",
        "hand-prop", "body-parts",
    ),
    # people shown as busts: roles, gestures, fantasy characters, couples and families (215)
    "people": ("person", "person-gesture", "person-role", "person-fantasy", "family", "person-symbol"),
    # full-body figures: walking, running, sports, resting (87)
    "people-active": ("person-activity", "person-sport", "person-resting"),
    # mammals, cat faces and monkey faces (78)
    "mammals": ("animal-mammal", "cat-face", "monkey-face"),
    # birds, reptiles, amphibians, sea animals and bugs (58)
    "animals-other": ("animal-bird", "animal-amphibian", "animal-reptile", "animal-marine", "animal-bug"),
    # flowers, plants, fruit and vegetables (64)
    "plants-produce": ("plant-flower", "plant-other", "food-fruit", "food-vegetable"),
    # prepared food, sweets, drinks and dishware (97)
    "food-drink": ("food-prepared", "food-asian", "food-marine", "food-sweet", "drink", "dishware"),
    # buildings, landscapes, vehicles, sky and weather (187)
    "travel-places": (
        "place-map", "place-geographic", "place-building", "place-religious", "place-other", "hotel",
        "transport-ground", "transport-water", "transport-air", "sky & weather",
    ),
    # events, medals, sports equipment, games, arts and crafts (85)
    "activities": ("event", "award-medal", "sport", "game", "arts & crafts"),
    # clothing, music, electronics, paper, money, mail and office things (182)
    "clothing-objects": (
        "clothing", "sound", "music", "musical-instrument", "phone", "computer", "light & video", "book-paper",
        "money", "mail", "writing", "office",
    ),
    # clocks, locks, tools, science, medical and household things (110)
    "tools-household": ("time", "lock", "tool", "science", "medical", "household", "other-object"),
    # symbols, mostly white glyphs on coloured squares: arrows, signs, zodiac, letters, keycaps (189)
    "symbols": (
        "transport-sign", "warning", "arrow", "religion", "zodiac", "av-symbol", "gender", "math", "punctuation",
        "currency", "other-symbol", "keycap", "alphanum",
    ),
    # plain coloured shapes: hearts, circles, squares, diamonds and comic marks (73)
    "hearts-shapes": ("heart", "emotion", "geometric"),
    # national, regional and other flags (269)
    "flags": ("flag", "country-flag", "subdivision-flag"),
}  # fmt: skip

# a subgroup that a newer emoji-test.txt adds goes to its group's class
GROUP_FALLBACK: dict[str, str] = {
    "Smileys & Emotion": "faces-other",
    "People & Body": "people",
    "Animals & Nature": "animals-other",
    "Food & Drink": "food-drink",
    "Travel & Places": "travel-places",
    "Activities": "activities",
    "Objects": "clothing-objects",
    "Symbols": "symbols",
    "Flags": "flags",
}

CLASS_NAMES = list(CLASSES)
_SUBGROUP_TO_CLASS = {sub: i for i, subs in enumerate(CLASSES.values()) for sub in subs}


@dataclass(frozen=True)
class EmojiEntry:
    """One line of emoji-test.txt: code points, CLDR name, group and subgroup."""

    codepoints: tuple[int, ...]
    name: str
    group: str
    subgroup: str

    @property
    def key(self) -> str:
        """The code points as in emoji-test.txt, e.g. ``'1F468 200D 1F469'``."""
        return " ".join(f"{cp:04X}" for cp in self.codepoints)


def default_cache_dir() -> Path:
    """``$JIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/jit-diffusion``, else ``~/.cache/jit-diffusion``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "jit-diffusion"


def resolve_sources(font_path: str | os.PathLike | None = None, emoji_test_path: str | os.PathLike | None = None):
    """The font and emoji-test.txt paths (argument, else env var, else Debian default); both must exist."""
    font = Path(font_path or os.environ.get(FONT_ENV) or DEFAULT_FONT)
    emoji_test = Path(emoji_test_path or os.environ.get(EMOJI_TEST_ENV) or DEFAULT_EMOJI_TEST)
    if not font.is_file():
        raise FileNotFoundError(
            f"emoji font not found at {font}: install it with `apt-get install fonts-noto-color-emoji` "
            f"(or point {FONT_ENV} at NotoColorEmoji.ttf)"
        )
    if not emoji_test.is_file():
        raise FileNotFoundError(
            f"emoji list not found at {emoji_test}: install it with `apt-get install unicode-data` "
            f"(or point {EMOJI_TEST_ENV} at emoji-test.txt)"
        )
    return font, emoji_test


def class_index(group: str, subgroup: str) -> int:
    """The class of an emoji-test.txt subgroup (falling back to its group for unknown subgroups)."""
    if subgroup in _SUBGROUP_TO_CLASS:
        return _SUBGROUP_TO_CLASS[subgroup]
    if group in GROUP_FALLBACK:
        return CLASS_NAMES.index(GROUP_FALLBACK[group])
    raise ValueError(f"emoji group {group!r} / subgroup {subgroup!r} has no class in jit_diffusion.emoji.CLASSES")


def parse_emoji_test(path: str | os.PathLike, skin_tones: bool = False) -> list[EmojiEntry]:
    """The fully-qualified emoji of an emoji-test.txt, in file order (skin-tone variants only if asked)."""
    entries, group, subgroup = [], "", ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif line.strip() and not line.startswith("#"):
                fields, _, comment = line.partition("#")
                cps, _, status = fields.partition(";")
                if status.strip() != "fully-qualified":
                    continue
                codepoints = tuple(int(cp, 16) for cp in cps.split())
                if not skin_tones and any(cp in SKIN_TONE_MODIFIERS for cp in codepoints):
                    continue
                # comment: "<emoji> E<version> <name>"
                name = comment.strip().split(" ", 2)[-1]
                entries.append(EmojiEntry(codepoints, name, group, subgroup))
    if not entries:
        raise ValueError(f"no fully-qualified emoji found in {path}: is it Unicode's emoji-test.txt?")
    return entries


class EmojiFont:
    """Colour bitmaps of an emoji font with CBDT/CBLC tables, looked up by code-point sequence."""

    def __init__(self, path: str | os.PathLike):
        from fontTools.ttLib import TTFont

        self.path = Path(path)
        try:
            self.font = TTFont(str(path), lazy=True)
            tables = set(self.font.keys())
        except Exception as err:
            raise ValueError(f"cannot read emoji font {path}: {err}") from err
        if not {"CBDT", "CBLC"} <= tables:
            raise ValueError(
                f"{path} has no CBDT/CBLC colour bitmaps: use the bitmap NotoColorEmoji.ttf "
                "from `apt-get install fonts-noto-color-emoji`"
            )
        self.cmap = self.font.getBestCmap()
        self.ligatures = self._ligatures()
        # the largest strike holds the sharpest bitmaps
        strikes = self.font["CBLC"].strikes
        best = max(range(len(strikes)), key=lambda i: strikes[i].bitmapSizeTable.ppemY)
        self.strike = self.font["CBDT"].strikeData[best]

    def _ligatures(self) -> dict[tuple[str, ...], str]:
        """Glyph sequence -> ligature glyph, from every GSUB ligature lookup (ZWJ, flags, keycaps, tags)."""
        ligatures: dict[tuple[str, ...], str] = {}
        if "GSUB" not in self.font:
            return ligatures
        for lookup in self.font["GSUB"].table.LookupList.Lookup:
            for subtable in lookup.SubTable:
                if lookup.LookupType == 7:  # extension: the real subtable is wrapped
                    subtable = subtable.ExtSubTable
                if getattr(subtable, "LookupType", lookup.LookupType) != 4:
                    continue
                for first, ligs in subtable.ligatures.items():
                    for lig in ligs:
                        ligatures.setdefault((first, *lig.Component), lig.LigGlyph)
        return ligatures

    def glyph_name(self, codepoints: tuple[int, ...]) -> str | None:
        """The glyph drawn for a code-point sequence, or None when the font has no bitmap for it."""
        without_vs = tuple(cp for cp in codepoints if cp != VARIATION_SELECTOR_16)
        for seq in (without_vs, codepoints):
            glyphs = tuple(self.cmap.get(cp) for cp in seq)
            if not glyphs or None in glyphs:
                continue
            name = glyphs[0] if len(glyphs) == 1 else self.ligatures.get(glyphs)
            if name is not None and name in self.strike:
                return name
        return None

    def bitmap(self, glyph_name: str) -> Image.Image:
        """The glyph's colour bitmap as an RGBA image (136x128 for Noto Color Emoji)."""
        glyph = self.strike[glyph_name]
        glyph.ensureDecompiled()
        data = getattr(glyph, "imageData", None)
        if data is None:
            raise ValueError(f"glyph {glyph_name} in {self.path} is not a PNG bitmap")
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGBA")


def square_on_white(image: Image.Image) -> np.ndarray:
    """Composite an RGBA image onto white and pad it to a centred square: (S, S, 3) uint8."""
    side = max(image.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.asarray(canvas.convert("RGB"))


def heldout_mask(keys: list[str], labels: np.ndarray, fraction: float = HELDOUT_FRACTION) -> np.ndarray:
    """Which items are held out: in each class the round(fraction * n) (at least 1) with the smallest
    SHA-256 of their key. Depends only on the keys and labels, so it is the same on every machine."""
    labels = np.asarray(labels)
    mask = np.zeros(len(keys), dtype=bool)
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = max(1, round(fraction * len(members)))
        ranked = sorted(members, key=lambda i: digests[i])
        mask[ranked[:count]] = True
    return mask


def _fingerprint(font: Path, emoji_test: Path, skin_tones: bool) -> str:
    """A short hash of everything the rendered set depends on: sources, class mapping, options."""
    ident = {
        "font": [font.name, font.stat().st_size],
        "emoji_test": [emoji_test.name, emoji_test.stat().st_size],
        "classes": CLASSES,
        "fallback": GROUP_FALLBACK,
        "skin_tones": skin_tones,
        "version": CACHE_VERSION,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]


def _save_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    """Write an .npz without pickles atomically (:func:`fileio.atomic_write_path`); ``compress``
    deflates at the fast level 1, otherwise the arrays are stored as they are (fastest load)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=mode, compresslevel=1 if compress else None) as archive:
            for key, value in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)

    atomic_write_path(path, write)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def render_native(font_path: Path, emoji_test_path: Path, skin_tones: bool = False) -> dict[str, np.ndarray]:
    """Render every emoji at the font's resolution: images (N, S, S, 3) uint8 on white, plus metadata."""
    entries = parse_emoji_test(emoji_test_path, skin_tones=skin_tones)
    font = EmojiFont(font_path)
    images, kept, missing = [], [], []
    for entry in entries:
        glyph = font.glyph_name(entry.codepoints)
        try:
            bitmap = font.bitmap(glyph) if glyph is not None else None
        except ValueError:  # a glyph stored in a non-PNG bitmap format
            bitmap = None
        if bitmap is None:
            missing.append(entry.key)
            continue
        images.append(square_on_white(bitmap))
        kept.append(entry)
    if not images:
        raise ValueError(f"{font_path} has no bitmap for any emoji listed in {emoji_test_path}")
    side = max(im.shape[0] for im in images)
    if any(im.shape[0] != side for im in images):  # a font with mixed bitmap sizes: bring all to the largest
        images = [np.asarray(Image.fromarray(im).resize((side, side), Image.LANCZOS)) for im in images]
    meta = {"font": str(font_path), "emoji_test": str(emoji_test_path), "skin_tones": skin_tones, "missing": missing}
    return {
        "images": np.stack(images),  # (N, S, S, 3)
        "labels": np.array([class_index(e.group, e.subgroup) for e in kept], dtype=np.int64),
        "codepoints": np.array([e.key for e in kept]),
        "names": np.array([e.name for e in kept]),
        "class_names": np.array(CLASS_NAMES),
        "meta": np.array(json.dumps(meta)),
    }


def _resize_all(images: np.ndarray, image_size: int) -> np.ndarray:
    """(N, S, S, 3) -> (N, 3, image_size, image_size) uint8 with Lanczos resampling."""
    out = np.empty((len(images), 3, image_size, image_size), dtype=np.uint8)
    for i, im in enumerate(images):
        resized = Image.fromarray(im).resize((image_size, image_size), Image.LANCZOS)
        out[i] = np.asarray(resized).transpose(2, 0, 1)
    return out


def emoji_cache_path(
    image_size: int | str,
    cache_dir: str | os.PathLike | None = None,
    skin_tones: bool = False,
    font_path: str | os.PathLike | None = None,
    emoji_test_path: str | os.PathLike | None = None,
) -> Path:
    """Where the rendered set lives: ``<cache>/emoji/emoji[-skin]-v1-<fingerprint>-<size>px.npz``."""
    font, emoji_test = resolve_sources(font_path, emoji_test_path)
    size = image_size if isinstance(image_size, str) else f"{image_size}px"
    stem = "emoji-skin" if skin_tones else "emoji"
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "emoji" / f"{stem}-v{CACHE_VERSION}-{_fingerprint(font, emoji_test, skin_tones)}-{size}.npz"


def load_emoji_arrays(
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    skin_tones: bool = False,
    font_path: str | os.PathLike | None = None,
    emoji_test_path: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """The whole emoji set at one size: images (N, 3, H, W) uint8, labels, codepoints, names, class_names,
    meta. Loaded from the cache; on a miss derived from the cached native render (made once)."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"emoji image size must be a positive integer, got {image_size!r}")
    image_size = int(image_size)
    font, emoji_test = resolve_sources(font_path, emoji_test_path)
    sized_path = emoji_cache_path(image_size, cache_dir, skin_tones, font, emoji_test)
    if sized_path.is_file():
        return _load_npz(sized_path)
    native_path = emoji_cache_path("native", cache_dir, skin_tones, font, emoji_test)
    if native_path.is_file():
        arrays = _load_npz(native_path)
    else:
        arrays = render_native(font, emoji_test, skin_tones)
        _save_npz(native_path, arrays, compress=True)  # ~7 MB
    arrays["images"] = _resize_all(arrays["images"], image_size)  # (N, 3, H, W)
    _save_npz(sized_path, arrays, compress=False)  # N * 3 * H * W bytes: 23 MB at 64 px, 368 MB at 256 px
    return arrays


class EmojiDataset(Dataset):
    """The built-in emoji set: items ``(uint8 (3, H, W) on white, class index)``, 16 classes.

    ``split`` is ``"train"`` (~90% of each class), ``"heldout"`` (the fixed ~10%) or ``"all"``.
    Extras beside the common dataset attributes: ``images`` (N, 3, H, W), ``names``, ``codepoints``,
    ``missing`` (code points the font has no bitmap for) and ``cache_path``.
    """

    def __init__(
        self,
        image_size: int,
        split: str = "train",
        cache_dir: str | os.PathLike | None = None,
        skin_tones: bool = False,
        font_path: str | os.PathLike | None = None,
        emoji_test_path: str | os.PathLike | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown emoji split {split!r}: expected one of {', '.join(SPLITS)}")
        arrays = load_emoji_arrays(image_size, cache_dir, skin_tones, font_path, emoji_test_path)
        codepoints = [str(c) for c in arrays["codepoints"]]
        heldout = heldout_mask(codepoints, arrays["labels"])
        keep = np.ones(len(heldout), dtype=bool) if split == "all" else heldout if split == "heldout" else ~heldout
        index = np.flatnonzero(keep)
        self.split = split
        self.image_size = int(image_size)
        self.images = arrays["images"] if split == "all" else arrays["images"][index]  # (N, 3, H, W) uint8
        self.labels = arrays["labels"][index].astype(np.int64)
        self.codepoints = [codepoints[i] for i in index]
        self.names = [str(arrays["names"][i]) for i in index]
        self.class_names = [str(c) for c in arrays["class_names"]]
        self.num_classes = len(self.class_names)
        self.missing = list(json.loads(str(arrays["meta"]))["missing"])
        self.cache_path = emoji_cache_path(image_size, cache_dir, skin_tones, font_path, emoji_test_path)
        self.source = "emoji" + ("-skin-tones" if skin_tones else "")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[index].copy()), int(self.labels[index])
