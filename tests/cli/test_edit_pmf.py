"""`jit edit` on a pMF model (img2img and inpaint with its few-step sampler; the ODE operations refused in one
line) and `jit edit inpaint --resample` on a JiT run folder."""

from pathlib import Path

import numpy as np
import pytest
from cli.test_edit import cropped, inputs, npz  # noqa: F401 (fixture)
from evaluation.test_evaluate import tiny_run  # noqa: F401 (fixture)
from PIL import Image

from jit_diffusion.cli import main

OFFICIAL = Path(__file__).parents[1] / "fixtures" / "pmf" / "pmf_tiny_official.pt"


@pytest.fixture
def big_inputs(tmp_path):
    """Three images for the 16-pixel pMF model."""
    folder = tmp_path / "inputs16"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for k, size in enumerate((16, 24, 40)):
        Image.fromarray(rng.integers(0, 256, (size, size + k, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def pmf_edit(operation, *extra) -> int:
    return main(["edit", operation, str(OFFICIAL), "--device", "cpu", *extra])


def test_pmf_img2img_strength_one_is_jit_sample_and_zero_the_inputs(big_inputs, tmp_path):
    assert main(["sample", str(OFFICIAL), "--classes", "2", "--per-class", "3", "--cfg", "3", "--steps", "2",
                 "--interval", "0.3,0.9", "--seed", "5", "--device", "cpu", "--npz", str(tmp_path / "s.npz")]) == 0
    assert pmf_edit("img2img", "--input", str(big_inputs), "--strength", "1", "--classes", "2", "--cfg", "3",
                    "--steps", "2", "--interval", "0.3,0.9", "--seed", "5", "--batch-size", "2",
                    "--npz", str(tmp_path / "e.npz")) == 0  # fmt: skip
    assert np.array_equal(npz(tmp_path / "e.npz"), npz(tmp_path / "s.npz"))
    assert pmf_edit("img2img", "--input", str(big_inputs), "--strength", "0", "--npz", str(tmp_path / "z.npz")) == 0
    expected = np.stack([np.asarray(Image.open(p).convert("RGB"))[:16, :16] for p in sorted(big_inputs.iterdir())][:1])
    assert np.array_equal(npz(tmp_path / "z.npz")[:1], expected)  # the 16x16 input comes back as it is


def test_pmf_inpaint_keeps_the_known_pixels(big_inputs, tmp_path):
    assert pmf_edit("inpaint", "--input", str(big_inputs), "--box", "2,4,12,14", "--classes", "0,1,2", "--steps",
                    "2", "--npz", str(tmp_path / "box.npz")) == 0  # fmt: skip
    assert pmf_edit("img2img", "--input", str(big_inputs), "--strength", "0", "--npz", str(tmp_path / "in.npz")) == 0
    out, original = npz(tmp_path / "box.npz"), npz(tmp_path / "in.npz")
    keep = np.ones((16, 16), dtype=bool)
    keep[4:14, 2:12] = False
    assert np.array_equal(out[:, keep], original[:, keep]) and not np.array_equal(out[:, ~keep], original[:, ~keep])


@pytest.mark.parametrize("operation, extra, message", [
    ("invert", ["--noise-out", "NOISE"], "jit edit takes it for img2img and inpaint; invert runs the ODE of JiT"),
    ("reconstruct", ["--npz", "OUT"], "jit edit takes it for img2img and inpaint; reconstruct runs the ODE"),
    ("swap", ["--to", "1", "--npz", "OUT"], "swap runs the ODE of JiT models only"),
    ("inpaint", ["--box", "0,0,4,4", "--resample", "2", "--npz", "OUT"], "--resample applies to JiT models"),
    ("img2img", ["--method", "heun", "--npz", "OUT"], "--method heun does not apply to a pmf model"),
    ("img2img", ["--cfg", "0.5", "--npz", "OUT"], "--cfg 0.5: a pmf model takes guidance weights >= 1"),
    ("interpolate", ["--npz", "OUT"], "interpolate runs the ODE of JiT models only"),
])  # fmt: skip
def test_what_a_pmf_model_does_not_take_is_one_line(big_inputs, tmp_path, capsys, operation, extra, message):
    extra = [{"NOISE": str(tmp_path / "n.npz"), "OUT": str(tmp_path / "o.npz")}.get(e, e) for e in extra]
    given = [] if operation == "interpolate" else ["--input", str(big_inputs)]
    assert pmf_edit(operation, *given, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "n.npz").exists() and not (tmp_path / "o.npz").exists()


def test_inpaint_resample_keeps_pixels_changes_the_hole_and_ignores_batches(tiny_run, inputs, tmp_path):  # noqa: F811
    def run(name, *extra):
        assert main(["edit", "inpaint", str(tiny_run), "--steps", "4", "--device", "cpu", "--input", str(inputs),
                     "--box", "0,2,5,8", "--classes", "0,1,2", "--seed", "3", "--npz", str(tmp_path / name),
                     *extra]) == 0  # fmt: skip
        return npz(tmp_path / name)

    plain, one = run("plain.npz"), run("one.npz", "--resample", "1")
    two, two_batched, three = run("two.npz", "--resample", "2"), run("b.npz", "--resample", "2", "--batch-size",
                                                                     "2"), run("three.npz", "--resample", "3")
    keep = np.ones((8, 8), dtype=bool)
    keep[2:8, 0:5] = False
    assert np.array_equal(one, plain) and np.array_equal(two, two_batched)
    for out in (two, three):
        assert np.array_equal(out[:, keep], cropped(inputs)[:, keep])
    assert not np.array_equal(two[:, ~keep], plain[:, ~keep]) and not np.array_equal(two[:, ~keep], three[:, ~keep])


def test_bad_resample_is_refused_before_loading(tiny_run, inputs, tmp_path, capsys):  # noqa: F811
    assert main(["edit", "inpaint", str(tiny_run), "--input", str(inputs), "--box", "0,0,4,4", "--resample", "0",
                 "--npz", str(tmp_path / "o.npz")]) == 2  # fmt: skip
    assert "--resample must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()
