import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jit_diffusion.cli import main
from jit_diffusion.data import emoji
from jit_diffusion.data.datasets import load_dataset
from jit_diffusion.data.emoji import (
    CLASSES,
    DEFAULT_EMOJI_TEST,
    DEFAULT_FONT,
    EmojiDataset,
    EmojiFont,
    heldout_mask,
    parse_emoji_test,
)

needs_font = pytest.mark.skipif(
    not (Path(DEFAULT_FONT).is_file() and Path(DEFAULT_EMOJI_TEST).is_file()),
    reason="needs fonts-noto-color-emoji and unicode-data (scripts/system_deps.sh)",
)


@pytest.fixture(autouse=True)
def _default_sources(monkeypatch):
    monkeypatch.delenv(emoji.FONT_ENV, raising=False)
    monkeypatch.delenv(emoji.EMOJI_TEST_ENV, raising=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emoji-cache")


@pytest.fixture(scope="module")
def emoji_all(cache_dir):
    """The whole set at 32 px, rendered once for this module into a private cache."""
    if not (Path(DEFAULT_FONT).is_file() and Path(DEFAULT_EMOJI_TEST).is_file()):
        pytest.skip("needs fonts-noto-color-emoji and unicode-data")
    return EmojiDataset(32, split="all", cache_dir=cache_dir)


def _fail(*args, **kwargs):
    raise AssertionError("the font was read although the set is cached")


@needs_font
def test_sixteen_classes_sizes_and_no_skin_tones(emoji_all):
    ds = emoji_all
    assert ds.num_classes == 16 and ds.class_names == list(CLASSES) and len(set(ds.class_names)) == 16
    assert 1800 <= len(ds) <= 2100, len(ds)
    assert ds.missing == []  # the Debian font covers every fully-qualified emoji of its emoji-test.txt
    counts = np.bincount(ds.labels, minlength=16)
    assert counts.min() >= 40 and counts.max() <= 300, counts
    for key in ds.codepoints:
        assert not any(0x1F3FB <= int(cp, 16) <= 0x1F3FF for cp in key.split()), key
    assert len(set(ds.codepoints)) == len(ds)
    names = dict(zip(ds.names, ds.labels))
    expected = {
        "grinning face": "faces-happy", "angry face": "faces-other", "thumbs up": "hands",
        "dog face": "mammals", "sunflower": "plants-produce", "pizza": "food-drink", "red heart": "hearts-shapes",
        "flag: Japan": "flags", "automobile": "travel-places", "hammer": "tools-household", "soccer ball": "activities",
    }  # fmt: skip
    for name, class_name in expected.items():
        assert ds.class_names[names[name]] == class_name, name


@needs_font
def test_every_subgroup_has_exactly_one_class():
    subgroups = [s for subs in CLASSES.values() for s in subs]
    assert len(subgroups) == len(set(subgroups))
    in_file = {e.subgroup for e in parse_emoji_test(DEFAULT_EMOJI_TEST)}
    assert in_file <= set(subgroups), in_file - set(subgroups)  # mapped by name, not by the group fallback


@needs_font
def test_images_are_uint8_on_white(emoji_all):
    image, label = emoji_all[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and isinstance(label, int)
    images = emoji_all.images  # (N, 3, 32, 32)
    corners = np.stack([images[:, :, 0, 0], images[:, :, 0, -1], images[:, :, -1, 0], images[:, :, -1, -1]], 1)
    assert (corners.min(axis=(1, 2)) >= 250).mean() > 0.99
    assert 120 < images.mean() < 240  # neither blank nor black
    assert images.std() > 40


@needs_font
def test_heldout_split_is_fixed_disjoint_and_about_ten_percent(emoji_all, cache_dir):
    train = EmojiDataset(32, split="train", cache_dir=cache_dir)
    heldout = EmojiDataset(32, split="heldout", cache_dir=cache_dir)
    assert not set(train.codepoints) & set(heldout.codepoints)
    assert sorted(train.codepoints + heldout.codepoints) == sorted(emoji_all.codepoints)
    assert 0.08 <= len(heldout) / len(emoji_all) <= 0.12
    held_counts, all_counts = np.bincount(heldout.labels, minlength=16), np.bincount(emoji_all.labels, minlength=16)
    assert (held_counts >= 1).all() and (np.abs(held_counts - 0.1 * all_counts) <= 1).all()
    assert EmojiDataset(32, split="heldout", cache_dir=cache_dir).codepoints == heldout.codepoints
    assert set(train.class_names) == set(heldout.class_names) and train.num_classes == 16
    with pytest.raises(ValueError, match="unknown emoji split 'test'"):
        EmojiDataset(32, split="test", cache_dir=cache_dir)


def test_heldout_choice_is_pinned():
    # the rule (smallest SHA-256 per class) must never change: evaluation numbers depend on it
    keys = [f"{0x1F600 + i:04X}" for i in range(30)]
    labels = np.array([0] * 20 + [1] * 10)
    assert np.flatnonzero(heldout_mask(keys, labels)).tolist() == [4, 14, 28]
    assert np.array_equal(heldout_mask(keys[::-1], labels[::-1])[::-1], heldout_mask(keys, labels))  # order-free


@needs_font
def test_second_load_uses_the_cache(emoji_all, cache_dir, monkeypatch):
    monkeypatch.setattr(emoji, "render_native", _fail)
    monkeypatch.setattr(emoji, "EmojiFont", _fail)
    start = time.perf_counter()
    again = EmojiDataset(32, split="all", cache_dir=cache_dir)
    assert time.perf_counter() - start < 1.0
    assert np.array_equal(again.images, emoji_all.images) and np.array_equal(again.labels, emoji_all.labels)
    assert again.cache_path.is_file() and again.cache_path.name.endswith("-32px.npz")
    # a new size is derived from the cached native render, still without reading the font
    small = EmojiDataset(16, split="all", cache_dir=cache_dir)
    assert small.images.shape == (len(emoji_all), 3, 16, 16) and small.codepoints == emoji_all.codepoints


@needs_font
@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_render_sizes(size):
    font = EmojiFont(DEFAULT_FONT)
    natives = [emoji.square_on_white(font.bitmap(font.glyph_name(cps))) for cps in [(0x1F600,), (0x1F1EF, 0x1F1F5)]]
    assert natives[0].shape == (136, 136, 3)
    images = emoji._resize_all(np.stack(natives), size)
    assert images.shape == (2, 3, size, size) and images.dtype == np.uint8
    assert (images[:, :, 0, 0] == 255).all()
    yellow = images[0, :, size // 2, size // 4]  # the grinning face's cheek
    assert yellow[0] > 200 and yellow[1] > 150 and yellow[2] < 100


@needs_font
def test_sequences_resolve_to_distinct_glyphs():
    font = EmojiFont(DEFAULT_FONT)
    sequences = {
        "flag": (0x1F1FA, 0x1F1F8),
        "keycap": (0x23, 0xFE0F, 0x20E3),
        "zwj": (0x1F468, 0x200D, 0x1F469, 0x200D, 0x1F467),
        "tag": (0x1F3F4, 0xE0067, 0xE0062, 0xE0073, 0xE0063, 0xE0074, 0xE007F),
        "single": (0x1F600,),
        "with_fe0f": (0x2764, 0xFE0F),
    }
    glyphs = {k: font.glyph_name(v) for k, v in sequences.items()}
    assert None not in glyphs.values() and len(set(glyphs.values())) == len(glyphs)
    assert font.glyph_name((0x1F600, 0x200D, 0x1F1FA)) is None
    assert font.bitmap(glyphs["flag"]).size == (136, 128)


def test_skin_tones_are_optional():
    if not Path(DEFAULT_EMOJI_TEST).is_file():
        pytest.skip("needs unicode-data")
    plain, toned = parse_emoji_test(DEFAULT_EMOJI_TEST), parse_emoji_test(DEFAULT_EMOJI_TEST, skin_tones=True)
    assert len(toned) > 1.8 * len(plain)
    assert any(0x1F3FB in e.codepoints for e in toned) and not any(0x1F3FB in e.codepoints for e in plain)


def test_missing_font_and_list_give_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(emoji.FONT_ENV, str(tmp_path / "NoFont.ttf"))
    with pytest.raises(FileNotFoundError) as err:
        EmojiDataset(32, cache_dir=tmp_path)
    message = str(err.value)
    assert "fonts-noto-color-emoji" in message and str(tmp_path / "NoFont.ttf") in message and "\n" not in message
    assert main(["data", "emoji", "--img-size", "32", "--cache-dir", str(tmp_path)]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and "apt-get install fonts-noto-color-emoji" in printed

    if Path(DEFAULT_FONT).is_file():
        monkeypatch.delenv(emoji.FONT_ENV)
        monkeypatch.setenv(emoji.EMOJI_TEST_ENV, str(tmp_path / "none.txt"))
        with pytest.raises(FileNotFoundError, match="apt-get install unicode-data"):
            load_dataset("emoji", 32, cache_dir=str(tmp_path))


@needs_font
def test_explicit_paths_override_env(emoji_all, cache_dir, monkeypatch):
    monkeypatch.setenv(emoji.FONT_ENV, "/nonexistent/font.ttf")
    ds = EmojiDataset(32, split="all", cache_dir=cache_dir, font_path=DEFAULT_FONT)
    assert len(ds) == len(emoji_all)


@needs_font
def test_cli_emoji_grid(emoji_all, cache_dir, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    args = ["data", "emoji", "--img-size", "32", "--cache-dir", str(cache_dir), "--grid", str(grid)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "16 classes" in printed and "faces-happy" in printed and "flags" in printed
    image = Image.open(grid)
    assert image.format == "PNG" and image.height == 16 * (32 + 2) + 2
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 30  # the tiles are there, not a blank canvas
