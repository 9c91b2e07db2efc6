import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from jit_diffusion.cli import main
from jit_diffusion.core.fileio import read_json_object
from jit_diffusion.data.datasets import (
    CachedDataset,
    CorruptImageError,
    ImageFolderDataset,
    build_cache,
    center_crop_arr,
    load_dataset,
    to_rgb,
    write_cache,
)


def _solid(path, color, size=(20, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def class_tree(tmp_path):
    root = tmp_path / "classes"
    _solid(root / "cat" / "a.png", (255, 0, 0))
    _solid(root / "cat" / "nested" / "b.JPG", (250, 10, 10))  # recursive, upper-case extension
    _solid(root / "dog" / "c.png", (0, 0, 255), size=(40, 24))
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


# --- the ADM centre crop ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(100, 60), (60, 100), (33, 200), (32, 32)])
def test_center_crop_size(size):
    out = center_crop_arr(Image.fromarray(_noise(size[1], size[0])), 32)
    assert out.size == (32, 32) and out.mode == "RGB"


def test_center_crop_constant_colour_is_exact():
    out = np.asarray(center_crop_arr(Image.new("RGB", (90, 50), (10, 200, 30)), 32))
    assert (out == np.array([10, 200, 30], dtype=np.uint8)).all()


def test_center_crop_takes_the_centre():
    # bands red | green | blue of widths 25 | 50 | 25 on a 100x50 image: the 32 px crop of the
    # 64x32 resize covers exactly the green band, bleeding equally into red (left) and blue (right)
    arr = np.zeros((50, 100, 3), dtype=np.uint8)
    arr[:, :25, 0] = 255
    arr[:, 25:75, 1] = 255
    arr[:, 75:, 2] = 255
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 32)).astype(int)
    assert out.shape == (32, 32, 3)
    assert (np.abs(out[:, 4:28] - [0, 255, 0]) <= 2).all()
    assert out[16, 0, 0] > 5 and out[16, 0, 2] == 0  # left edge: a little red, no blue
    assert out[16, 31, 2] > 5 and out[16, 31, 0] == 0  # right edge: a little blue, no red
    assert abs(out[16, 0, 0] - out[16, 31, 2]) <= 1  # symmetric: the crop is centred


def test_center_crop_box_path_for_2x_images():
    # a 64 px image cropped to 32 goes through one BOX halving: the 2x2 block means
    arr = _noise(64, 64)
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 32)).astype(int)
    block_mean = arr.astype(float).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(out - block_mean).max() <= 1
    bicubic_only = np.asarray(Image.fromarray(arr).resize((32, 32), Image.BICUBIC)).astype(int)
    assert np.abs(out - bicubic_only).max() > 5  # a plain bicubic resize would be different


def test_center_crop_4x_image_halves_twice():
    arr = _noise(256, 320, seed=1)  # short side 256 >= 2*64 twice -> 64x80, then a crop of the middle 64 columns
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 64)).astype(int)
    block_mean = arr.astype(float).reshape(64, 4, 80, 4, 3).mean(axis=(1, 3))[:, 8:72]
    assert np.abs(out - block_mean).max() <= 2  # two rounding stages
    assert np.abs(out - block_mean).mean() < 1.5


# --- colour modes --------------------------------------------------------------------------


def test_grayscale_and_16bit_to_rgb():
    assert np.asarray(to_rgb(Image.new("L", (4, 4), 77)))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(to_rgb(Image.new("1", (4, 4), 1)))[0, 0].tolist() == [255, 255, 255]
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(to_rgb(sixteen))[0, 0].tolist() == [255, 255, 255]
    half = Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16))
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [100, 100, 100]


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(to_rgb(clear))[0, 0].tolist() == [255, 255, 255]
    opaque = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    assert np.asarray(to_rgb(opaque))[0, 0].tolist() == [0, 0, 255]
    half = np.asarray(to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 128))))[0, 0]
    assert np.abs(half.astype(int) - 127).max() <= 1
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0])
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]


def test_palette_and_cmyk_files_load_as_rgb(tmp_path):
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 0, 128, 0])
    pal.save(tmp_path / "p.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    Image.new("L", (8, 8), 50).save(tmp_path / "g.png")
    ds = ImageFolderDataset(tmp_path, 8)
    images = {p.name: ds[i][0] for i, p in enumerate(ds.paths)}
    assert all(t.shape == (3, 8, 8) and t.dtype == torch.uint8 for t in images.values())
    assert images["p.png"][:, 0, 0].tolist() == [0, 128, 0]
    assert images["g.png"][:, 0, 0].tolist() == [50, 50, 50]
    red = images["c.jpg"][:, 4, 4].int()
    assert red[0] > 230 and red[1] < 30 and red[2] < 30


# --- image folders -------------------------------------------------------------------------


def test_class_folders(class_tree):
    ds = ImageFolderDataset(class_tree, 16)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and ds.image_size == 16
    assert len(ds) == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1]
    image, label = ds[2]
    assert isinstance(label, int) and label == 1
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert image[:, 8, 8].tolist() == [0, 0, 255]  # not normalised, not flipped
    assert ds[0][0][:, 8, 8].tolist() == [255, 0, 0]


def test_flat_folder_is_unconditional(tmp_path):
    _solid(tmp_path / "x.png", (1, 2, 3))
    _solid(tmp_path / "y.bmp", (4, 5, 6))
    _solid(tmp_path / "z.webp", (7, 8, 9), size=(16, 16))
    ds = ImageFolderDataset(tmp_path, 8)
    assert ds.num_classes == 0 and ds.class_names == []
    assert ds.labels.tolist() == [0, 0, 0]
    assert [label for _, label in (ds[i] for i in range(3))] == [0, 0, 0]


def test_corrupt_image_error_names_the_file(tmp_path):
    _solid(tmp_path / "a" / "good.png", (0, 0, 0))
    bad = tmp_path / "a" / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "a" / "cut.png"
    Image.fromarray(_noise(64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    ds = ImageFolderDataset(tmp_path, 8)
    for path in (bad, truncated):
        with pytest.raises(CorruptImageError, match="cannot decode image") as err:
            ds[ds.paths.index(path)]
        assert str(path) in str(err.value)
        assert isinstance(err.value, ValueError)


def test_missing_and_empty_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        ImageFolderDataset(tmp_path / "nope", 8)
    assert str(tmp_path / "nope") in str(err.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no images found in .*empty: expected class subfolders"):
        ImageFolderDataset(tmp_path / "empty", 8)


def test_loose_images_beside_class_folders_and_empty_class_are_errors(tmp_path):
    _solid(tmp_path / "mixed" / "a" / "x.png", (0, 0, 0))
    _solid(tmp_path / "mixed" / "loose.png", (0, 0, 0))
    with pytest.raises(ValueError, match="both images"):
        ImageFolderDataset(tmp_path / "mixed", 8)
    _solid(tmp_path / "gap" / "a" / "x.png", (0, 0, 0))
    (tmp_path / "gap" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*b holds no images"):
        ImageFolderDataset(tmp_path / "gap", 8)


# --- the uint8 cache -----------------------------------------------------------------------


def test_cache_round_trip_is_bit_exact(class_tree, tmp_path):
    for i in range(5):  # noisy images so that every pixel matters
        Image.fromarray(_noise(30 + i, 40, seed=i)).save(class_tree / "dog" / f"n{i}.png")
    ds = ImageFolderDataset(class_tree, 16)
    path = build_cache(ds, tmp_path / "cache", num_workers=2, batch_size=3, progress=False)
    cached = CachedDataset(path)
    assert (len(cached), cached.num_classes, cached.class_names, cached.image_size) == (8, 2, ["cat", "dog"], 16)
    assert np.array_equal(cached.labels, ds.labels) and cached.labels.dtype == np.int64
    for i in range(len(ds)):
        (a, la), (b, lb) = ds[i], cached[i]
        assert torch.equal(a, b) and la == lb and b.dtype == torch.uint8
    assert isinstance(load_dataset(str(path), 16), CachedDataset)
    # pickling (DataLoader workers) must not carry the memory-mapped array along
    clone = pickle.loads(pickle.dumps(cached))
    assert len(pickle.dumps(cached)) < 4096 and torch.equal(clone[7][0], ds[7][0])


def test_cache_with_wrong_image_size_errors(class_tree, tmp_path):
    path = build_cache(ImageFolderDataset(class_tree, 16), tmp_path / "c16", progress=False)
    with pytest.raises(ValueError, match="holds 16 px images but 32 px were requested"):
        load_dataset(str(path), 32)


def test_cache_exists_and_interrupted_build(class_tree, tmp_path):
    path = build_cache(ImageFolderDataset(class_tree, 8), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="already exists"):
        build_cache(ImageFolderDataset(class_tree, 8), path, progress=False)
    class Failing(ImageFolderDataset):  # an error that is not about an image file stops the build
        def __getitem__(self, index):
            if index == 2:
                raise RuntimeError("interrupted")
            return super().__getitem__(index)

    with pytest.raises(RuntimeError, match="interrupted"):
        build_cache(Failing(class_tree, 8), tmp_path / "c2", batch_size=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "classes"]  # no partial cache, no temp folder
    # overwrite replaces the cache in one step
    build_cache(ImageFolderDataset(class_tree, 12), path, overwrite=True, progress=False)
    assert CachedDataset(path).image_size == 12


def test_write_cache_returns_the_meta_it_wrote(class_tree, tmp_path):
    meta = write_cache(ImageFolderDataset(class_tree, 8), tmp_path / "c", progress=False)
    assert meta == read_json_object(tmp_path / "c" / "meta.json")
    assert (meta["num_items"], meta["skipped"], meta["class_names"]) == (3, [], ["cat", "dog"])

def test_load_dataset_folder_splits_and_auto_cache(class_tree, tmp_path):
    ds = load_dataset(str(class_tree), 16)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 3
    assert len(load_dataset(str(class_tree), 16, split="all")) == 3
    with pytest.raises(ValueError, match="split 'heldout' is not available"):
        load_dataset(str(class_tree), 16, split="heldout")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(str(tmp_path / "missing"), 16)
    cached = load_dataset(str(class_tree), 16, cache_dir=str(tmp_path / "auto"))
    assert isinstance(cached, CachedDataset) and torch.equal(cached[1][0], ds[1][0])
    again = load_dataset(str(class_tree), 16, cache_dir=str(tmp_path / "auto"))
    assert again.path == cached.path  # reused, not rebuilt


def test_cli_cache_and_info(class_tree, tmp_path, capsys):
    out = tmp_path / "cli-cache"
    assert main(["data", "cache", str(class_tree), "--img-size", "16", "--out", str(out), "--num-workers", "0"]) == 0
    assert CachedDataset(out).labels.tolist() == [0, 0, 1]
    grid = tmp_path / "grid.png"
    assert main(["data", "info", str(out), "--img-size", "16", "--grid", str(grid), "--per-class", "2"]) == 0
    printed = capsys.readouterr().out
    assert "3 images, 2 classes" in printed and "cat" in printed
    assert Image.open(grid).height == 2 * (16 + 2) + 2
    assert main(["data", "cache", str(tmp_path / "nope"), "--img-size", "16", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and str(tmp_path / "nope") in err and err.count("\n") == 1
