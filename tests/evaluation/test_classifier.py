"""The offline classifier metric: deterministic training, caching, FD and class accuracy, the CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jit_diffusion.cli import main
from jit_diffusion.data.datasets import load_dataset
from jit_diffusion.evaluation import classifier as clf
from jit_diffusion.evaluation import classifier_train
from jit_diffusion.evaluation.classifier import (
    ClassifierMetrics,
    augment,
    dataset_arrays,
    get_classifier,
    load_classifier,
    train_classifier,
)

SIZE = 16


def _shape_image(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One of four easy classes: a red square, a green disc, blue stripes, a yellow cross, on white."""
    img = np.full((SIZE, SIZE, 3), 255.0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(6, 10, 2)
    if kind == 0:
        img[cy - 4 : cy + 4, cx - 4 : cx + 4] = (220, 30, 30)
    elif kind == 1:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 20] = (30, 180, 30)
    elif kind == 2:
        img[::4] = (30, 30, 220)
        img[1::4] = (30, 30, 220)
    else:
        img[cy - 1 : cy + 2, 2:-2] = (230, 200, 20)
        img[2:-2, cx - 1 : cx + 2] = (230, 200, 20)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A class-folder dataset: 4 classes x 12 images of 16 px."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for kind, name in enumerate(["a-square", "b-disc", "c-stripes", "d-cross"]):
        (root / name).mkdir()
        for i in range(12):
            Image.fromarray(_shape_image(kind, rng)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """Two trainings with the same seed, and the folder of the first one."""
    kw = dict(epochs=12, batch_size=16, threads=1, progress=False)
    first, second = train_classifier(str(shapes), SIZE, **kw), train_classifier(str(shapes), SIZE, **kw)
    folder = clf.save_classifier(*first, tmp_path_factory.mktemp("clf") / "shapes-16px")
    return first, second, folder


def test_training_is_deterministic(trained):
    (m1, c1), (m2, _), _ = trained
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert c1.train_images == 44 and c1.heldout_images == 4  # every 10th image of a class is held out
    assert c1.feature_dim == 256 and c1.metric_name == "FD-" + Path(c1.data).name


def test_classifies_its_training_data(trained, shapes):
    (_, config), _, _ = trained
    assert config.train_accuracy >= 0.9
    assert config.heldout_accuracy is not None


def test_saved_classifier_round_trips(trained):
    (model, config), _, folder = trained
    loaded, loaded_config = load_classifier(folder)
    assert loaded_config == config
    x = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_cache_is_reused(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("JIT_CACHE_DIR", str(tmp_path / "cache"))
    _, _, folder = get_classifier(str(shapes), SIZE, epochs=1, threads=1, progress=False)
    assert folder.parent == tmp_path / "cache" / "classifiers" and folder.name.endswith("-16px-v1")
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    retrain = lambda *a, **k: pytest.fail("retrained despite the cache")
    monkeypatch.setattr(classifier_train, "train_classifier", retrain)
    _, config, again = get_classifier(str(shapes), SIZE)
    assert again == folder and weights.stat().st_mtime_ns == stamp and config.epochs == 1
    with pytest.raises(ValueError, match="32 px"):
        ClassifierMetrics.create(str(shapes), 32, classifier=folder)


def test_fd_of_a_set_with_itself_is_zero_and_real_accuracy_is_high(trained, shapes):
    _, _, folder = trained
    metrics = ClassifierMetrics.create(None, SIZE, classifier=folder, reference_split="train")
    assert (folder / "reference-train.npz").is_file()  # cached for the next call
    images, labels = dataset_arrays(load_dataset(str(shapes), SIZE))
    result = metrics.compute(images, labels)
    trace = np.trace(metrics.reference["sigma"])
    assert abs(result[metrics.fd_name]) < 1e-6 * trace
    assert result["class_accuracy"] >= 0.9
    # a different image set is farther away
    shuffled = images[:, ::-1, ::-1].copy() // 2
    assert metrics.compute(shuffled, labels)[metrics.fd_name] > 100 * abs(result[metrics.fd_name]) + 1e-3


def test_augment_is_seeded_and_light():
    x = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, SIZE, SIZE) and torch.equal(a, b)
    assert (a - (x.float() / 127.5 - 1)).abs().mean() < 1.0


def test_metric_names():
    assert clf.metric_name_for("emoji") == "FD-emoji"
    assert clf.metric_name_for("/data/flowers") == "FD-flowers"
    assert clf.data_slug("emoji") == "emoji" and clf.data_slug("/data/flowers").startswith("flowers-")


def test_score_cli(trained, shapes, tmp_path, capsys):
    _, _, folder = trained
    assert main(["classifier", "score", "--data", str(shapes), "--split", "train", "--img-size", str(SIZE),
                 "--classifier", str(folder), "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "FD-shapes" in out and "class accuracy" in out
    images, labels = dataset_arrays(load_dataset(str(shapes), SIZE))
    npz = tmp_path / "samples.npz"
    np.savez(npz, arr_0=images, labels=labels)
    assert main(["classifier", "score", "--npz", str(npz), "--classifier", str(folder), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out
    fd = float(lines.split("FD-shapes")[1].split()[0])
    assert abs(fd) < 1e-3
    assert main(["classifier", "score", "--classifier", str(folder)]) == 2
    assert "exactly one of --npz" in capsys.readouterr().err
