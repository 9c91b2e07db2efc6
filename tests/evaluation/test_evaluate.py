"""Evaluation: Fréchet distance, the torch-fidelity Inception path (random weights), resumable chunked
generation, sweeps and the fail-fast checks of ``jit eval``."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import lively_jit
from PIL import Image

from jit_diffusion.cli import main
from jit_diffusion.evaluation import metrics, sample_store
from jit_diffusion.evaluation.classifier import ClassifierConfig, SmallCNN, save_classifier
from jit_diffusion.evaluation.frechet import StatsAccumulator, feature_stats, frechet_distance
from jit_diffusion.evaluation.metrics import InceptionFeatures, UInt8Images, inception_scores
from jit_diffusion.evaluation.sample_store import generate_chunks, sample_labels, weights_digest
from jit_diffusion.formats import loading
from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint, save_checkpoint
from jit_diffusion.formats.loading import open_source
from jit_diffusion.models.jit import JiTConfig

# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def _fd_by_eigh(mu1, s1, mu2, s2):
    """tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)) for PSD S1, S2: an independent route."""
    w, v = scipy.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = scipy.linalg.eigvalsh(root1 @ s2 @ root1)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()


def _gaussian_features(rng, n, d, scale):
    mix = rng.standard_normal((d, d)) * scale / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mix + rng.standard_normal(d)


def test_frechet_matches_direct_computation_well_conditioned():
    rng = np.random.default_rng(0)
    a, b = _gaussian_features(rng, 400, 16, 1.0), _gaussian_features(rng, 400, 16, 2.0)
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    expected = _fd_by_eigh(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    direct = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-12)


def test_frechet_rank_deficient_covariances():
    rng = np.random.default_rng(1)
    a, b = _gaussian_features(rng, 10, 32, 1.0), _gaussian_features(rng, 12, 32, 1.5)  # ranks 9 and 11 of 32
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    assert np.linalg.matrix_rank(s1) == 9
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(fd)
    assert fd == pytest.approx(_fd_by_eigh(mu1, s1, mu2, s2), rel=1e-5)


def test_frechet_singular_product(monkeypatch):
    mu = np.zeros(3)
    s1, s2 = np.diag([1.0, 0.0, 0.0]), np.diag([0.0, 1.0, 0.0])  # S1 S2 = 0
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(2.0, abs=1e-12)
    # a square root that comes back non-finite is retried with eps added to both diagonals
    real, calls = scipy.linalg.sqrtm, []

    def flaky(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else real(m)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky)
    assert frechet_distance(mu, s1, mu, s2, eps=1e-6) == pytest.approx(2.0, abs=5e-3)  # off by ~2 sqrt(eps)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(3)) @ (s2 + 1e-6 * np.eye(3)))


@pytest.mark.parametrize("n", [500, 8])
def test_frechet_of_identical_sets_is_zero(n):
    rng = np.random.default_rng(2)
    mu, sigma = feature_stats(_gaussian_features(rng, n, 24, 1.0))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_frechet_analytic_diagonal_gaussians():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    v1, v2 = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_batch_stats():
    rng = np.random.default_rng(4)
    x = _gaussian_features(rng, 300, 12, 1.0) + 50.0  # a large mean must not cost precision
    acc = StatsAccumulator()
    for part in np.array_split(x, 7):
        acc.update(part)
    mu, sigma = feature_stats(x)
    mu_s, sigma_s = acc.stats()
    np.testing.assert_allclose(mu_s, mu, rtol=1e-12)
    np.testing.assert_allclose(sigma_s, sigma, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Inception metrics with a randomly initialised torch-fidelity Inception
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_inception_input(monkeypatch):
    """Run the Inception at 75 px (its smallest input) instead of 299 px: 16x less work on CPU."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory) -> Path:
    """torch-fidelity's Inception-v3 architecture with random (He) weights, saved as a weights file."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
         mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):  # fmt: skip
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")  # keeps activations O(1)
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def _image_sets(n=10, m=6, size=16):
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size)[None, :, None, None] * rng.uniform(0.2, 1.0, (m, 1, 1, 3))
    smooth = np.broadcast_to(ramp.transpose(0, 2, 1, 3), (m, size, size, 3)).round().astype(np.uint8)
    return noise, smooth


@pytest.mark.slow
def test_inception_metrics_end_to_end_random_weights(random_inception, small_inception_input):
    import torch_fidelity

    a, b = _image_sets()
    net = InceptionFeatures(random_inception, feature_layer="64", batch_size=5)
    feats_a = net(a)
    assert feats_a["features"].shape == (10, 64) and feats_a["logits"].shape == (10, 1008)
    mu_a, sigma_a = feature_stats(feats_a["features"])
    ref_a = {"mu": mu_a, "sigma": sigma_a, "features": feats_a["features"].numpy()}
    ref_b = net.reference(UInt8Images(b), keep_features=True)  # streamed statistics of a dataset
    assert ref_b["count"] == 6 and ref_b["features"].shape == (6, 64)
    same = inception_scores(feats_a, ref_a, ["fid", "is", "pr"])
    other = inception_scores(feats_a, ref_b, ["fid", "is", "pr"])
    assert all(np.isfinite(v) for v in [*same.values(), *other.values()])
    assert other["FID"] > 0
    assert abs(same["FID"]) < 1e-6 * other["FID"]
    assert same["precision"] == same["recall"] == 1.0
    assert same["IS"] >= 1.0

    # the same numbers as torch-fidelity's own pipeline on the uint8 dataset wrappers
    tf = torch_fidelity.calculate_metrics(
        input1=UInt8Images(a), input2=UInt8Images(b), fid=True, isc=True, prc=True, cuda=False, cache=False,
        verbose=False, save_cpu_ram=True, batch_size=5, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(random_inception), feature_layer_fid="64", feature_layer_prc="64",
    )  # fmt: skip
    assert other["FID"] == pytest.approx(tf["frechet_inception_distance"], rel=1e-4)
    assert other["IS"] == pytest.approx(tf["inception_score_mean"], rel=1e-6)
    assert (other["precision"], other["recall"]) == (tf["precision"], tf["recall"])


def test_missing_inception_weights_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        metrics.inception_weights(None)
    text = str(err.value)
    assert "\n" not in text and metrics.INCEPTION_WEIGHTS_URL in text and "--inception-weights" in text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        metrics.inception_weights(tmp_path / "nope.pth")


# ---------------------------------------------------------------------------------------------
# jit eval on a tiny checkpoint
# ---------------------------------------------------------------------------------------------

TINY = JiTConfig(input_size=8, patch_size=4, hidden_size=32, depth=2, num_heads=2, num_classes=4,
                 bottleneck_dim=8, in_context_len=0)  # fmt: skip
CLASS_NAMES = ["blue", "green", "grey", "red"]  # sorted, as class folders are read


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A training checkpoint of a tiny JiT with non-zero output layers (so samples differ per image)."""
    model = lively_jit(TINY)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    ema = {e: {k: (v + 0.01 * i * torch.randn_like(v)).detach() for k, v in params.items()}
           for i, e in enumerate(["ema1", "ema2"])}  # fmt: skip
    ckpt = {
        "model": state, "ema": ema, "model_config": dataclasses.asdict(TINY),
        "config": {"prediction": "x", "noise_scale": 1.0, "t_eps": 0.05, "sample_cfg": 1.0,
                   "sample_interval": [0.1, 1.0], "data": "emoji", "img_size": 8},
        "class_names": CLASS_NAMES, "step": 10,
    }  # fmt: skip
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(ckpt, run, 10)
    (run / "config.json").write_text(json.dumps(ckpt["config"]))  # a run folder holds its config too
    return run


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A class-folder dataset of 8 px images, one colour per class."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    colours = [(40, 40, 220), (40, 200, 40), (128, 128, 128), (220, 40, 40)]
    for name, colour in zip(CLASS_NAMES, colours):
        (root / name).mkdir()
        for i in range(6):
            img = np.clip(np.array(colour) + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, tiny_folder) -> Path:
    """An untrained classifier folder for the tiny folder dataset (metrics only need it to run)."""
    config = ClassifierConfig(data=str(tiny_folder), image_size=8, class_names=CLASS_NAMES, metric_name="FD-data")
    torch.manual_seed(0)
    return save_classifier(SmallCNN(4, config.widths), config, tmp_path_factory.mktemp("clf") / "clf")


def _eval(run, out, *extra) -> int:
    return main(["eval", str(run), "--out", str(out), "--steps", "2", "--device", "cpu", *extra])


def _chunks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p)["arr_0"] for p in sorted(folder.glob("chunk_*.npz"))}


def test_sample_labels_are_balanced():
    labels = sample_labels(12, 4)
    assert np.bincount(labels).tolist() == [3, 3, 3, 3] and labels[:5].tolist() == [0, 1, 2, 3, 0]
    assert sample_labels(3, 0).tolist() == [0, 0, 0]


def test_chunked_generation_resumes(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    assert _eval(tiny_run, out, "--num", "10", "--chunk-size", "4", "--metrics", "none") == 0
    samples = out / "ema1-cfg1" / "samples"
    first = _chunks(samples)
    assert list(first) == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    assert [len(v) for v in first.values()] == [4, 4, 2]
    assert not np.array_equal(first["chunk_00000.npz"][0], first["chunk_00000.npz"][1])

    (samples / "chunk_00001.npz").unlink()
    calls = []
    real = sample_store.generate

    def counting(model, labels, **kw):
        calls.append((kw["start_index"], len(labels)))
        return real(model, labels, **kw)

    monkeypatch.setattr(sample_store, "generate", counting)
    assert _eval(tiny_run, out, "--num", "10", "--chunk-size", "4", "--metrics", "none") == 0
    assert calls == [(4, 4)]
    second = _chunks(samples)
    assert second.keys() == first.keys()
    for name in first:
        np.testing.assert_array_equal(second[name], first[name])


def test_resume_with_other_settings_is_refused(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _eval(tiny_run, out, "--num", "4", "--metrics", "none") == 0
    assert main(["eval", str(tiny_run), "--out", str(out), "--steps", "3", "--num", "4", "--metrics", "none"]) == 2
    assert "other settings (steps)" in capsys.readouterr().err


def test_resume_with_another_models_samples_is_refused(tiny_run, tmp_path, capsys):
    """The chunks record the weights' sha256: another run (or a newer checkpoint) with the same settings is
    refused in one line instead of being scored with the first model's images; the same weights under
    another path resume."""
    ckpt = read_checkpoint(latest_checkpoint(tiny_run))
    ckpt["model"] = {k: v + 0.01 for k, v in ckpt["model"].items()}
    other = tmp_path / "other"
    save_checkpoint(ckpt, other, 10)
    out = tmp_path / "ev"
    flags = ["--num", "2", "--steps", "1", "--cfg", "1", "--method", "dpm++2m", "--metrics", "none", "--ema", "raw"]
    assert _eval(tiny_run, out, *flags) == 0
    settings = out / "raw-cfg1" / "samples" / "settings.json"
    before = settings.read_text()
    capsys.readouterr()
    assert _eval(other, out, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "raw-cfg1/samples holds samples of another model (" in err
    assert err.endswith("): pass another --out or remove it") and str(other.resolve()) in err
    assert settings.read_text() == before
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run, moved)
    assert _eval(moved, out, *flags) == 0
    record = json.loads((out / "raw-cfg1" / "metrics.json").read_text())
    model, _ = open_source(tiny_run).load("raw")
    assert record["chunks_generated"] == 0 and record["sampling"]["step"] == 10
    assert record["sampling"]["weights_sha256"] == weights_digest(model.state_dict())
    assert record["sampling"]["model"] == str((moved / "checkpoints" / "step_00000010.pt").resolve())
    old = {k: v for k, v in json.loads(before).items() if k != "weights_sha256"}  # an older version's folder
    settings.write_text(json.dumps(old))
    assert _eval(tiny_run, out, *flags) == 2
    assert "holds samples of another model" in capsys.readouterr().err


def test_weights_digest_sees_every_byte_name_and_dtype():
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}
    digest = weights_digest(state)
    assert digest == weights_digest({k: v.clone() for k, v in reversed(state.items())})
    changed = {**state, "b": torch.tensor([0.0, 2**-8], dtype=torch.bfloat16)}
    assert len({digest, weights_digest(changed), weights_digest({"a": state["a"], "c": state["b"]}),
                weights_digest({**state, "a": state["a"].double()}),
                weights_digest({**state, "a": state["a"].view(3, 2)})}) == 5  # fmt: skip


def test_rank_sharding_matches_one_process(tiny_run, tmp_path):
    model, info = open_source(tiny_run).load("ema1")
    labels = sample_labels(10, info.num_classes)
    kw = dict(chunk_size=3, image_size=8, steps=2, seed=3)
    assert generate_chunks(model, tmp_path / "one", labels, **kw) == 4
    made = [generate_chunks(model, tmp_path / "two", labels, rank=r, world_size=2, **kw) for r in (0, 1)]
    assert made == [2, 2]
    one, two = _chunks(tmp_path / "one"), _chunks(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])


@pytest.mark.slow
def test_sweep_writes_table_csv_plot_and_metrics(tiny_run, tiny_classifier, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    loads = []
    real_read = loading.read_checkpoint
    monkeypatch.setattr(loading, "read_checkpoint", lambda *a, **k: loads.append(1) or real_read(*a, **k))
    code = _eval(tiny_run, out, "--num", "8", "--chunk-size", "8", "--ema", "ema1,ema2", "--cfg", "1.0,2.5",
                 "--metrics", "fd-emoji,acc", "--classifier", str(tiny_classifier), "--adm-npz")  # fmt: skip
    assert code == 0
    assert len(loads) == 1  # the checkpoint file is read once; EMAs are swapped in memory
    names = ["ema1-cfg1", "ema1-cfg2.5", "ema2-cfg1", "ema2-cfg2.5"]
    md = (out / "sweep.md").read_text().strip().splitlines()
    assert len(md) == 2 + 4 and "FD-data" in md[0] and "class_accuracy" in md[0]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["setting"] for r in rows] == names
    assert all(float(r["FD-data"]) >= 0 and 0 <= float(r["class_accuracy"]) <= 1 for r in rows)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "ema2-cfg2.5" / "metrics.json").read_text())
    assert record["ema"] == "ema2" and record["cfg"] == 2.5 and record["num"] == 8
    assert record["sampling"]["seed"] == 0 and record["time"] and set(record["metrics"]) == {"FD-data",
                                                                                               "class_accuracy"}
    # settings differ (EMA and CFG change the images)
    imgs = {n: np.load(out / n / "samples" / "chunk_00000.npz")["arr_0"] for n in names}
    assert not np.array_equal(imgs["ema1-cfg1"], imgs["ema2-cfg1"])
    assert not np.array_equal(imgs["ema1-cfg1"], imgs["ema1-cfg2.5"])
    # the ADM .npz holds the whole set
    with np.load(out / "ema1-cfg1" / "samples_8x8x8x3.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], imgs["ema1-cfg1"])
        assert f["arr_0"].dtype == np.uint8 and f["arr_1"].tolist() == sample_labels(8, 4).tolist()


def test_missing_inception_weights_fail_before_generation(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(sample_store, "generate", mock.Mock(side_effect=AssertionError("generated")))
    out = tmp_path / "eval"
    assert _eval(tiny_run, out, "--num", "4", "--metrics", "fid,is") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--inception-weights" in err and metrics.INCEPTION_WEIGHTS_URL in err
    assert not out.exists()


@pytest.mark.slow
def test_eval_and_fid_stats_with_inception(tiny_run, tiny_folder, random_inception, small_inception_input, tmp_path,
                                           monkeypatch):  # fmt: skip
    monkeypatch.setattr(metrics, "FID_FEATURE_LAYER", "64")  # a 2048-d sqrtm takes minutes on 2 cores
    stats = tmp_path / "ref.npz"
    code = main(["fid-stats", str(tiny_folder), "--img-size", "8", "--out", str(stats), "--with-features",
                 "--inception-weights", str(random_inception), "--device", "cpu"])  # fmt: skip
    assert code == 0
    with np.load(stats) as f:
        assert f["mu"].shape == (64,) and f["sigma"].shape == (64, 64) and int(f["count"]) == 24
    out = tmp_path / "eval"
    code = _eval(tiny_run, out, "--num", "10", "--metrics", "fid,is,pr", "--ref-stats", str(stats),
                 "--inception-weights", str(random_inception))  # fmt: skip
    assert code == 0
    result = json.loads((out / "ema1-cfg1" / "metrics.json").read_text())["metrics"]
    assert set(result) == {"FID", "IS", "IS_std", "precision", "recall"}
    assert all(np.isfinite(v) for v in result.values()) and result["FID"] > 0


def test_bad_metric_and_missing_reference(tiny_run, tmp_path, capsys):
    assert _eval(tiny_run, tmp_path / "a", "--num", "4", "--metrics", "kid") == 2
    assert "unknown metric 'kid'" in capsys.readouterr().err
    assert _eval(tiny_run, tmp_path / "b", "--num", "4", "--metrics", "fid", "--ref-stats", "nope.npz",
                 "--inception-weights", __file__) == 2  # fmt: skip
    assert "--ref-stats nope.npz does not exist" in capsys.readouterr().err
