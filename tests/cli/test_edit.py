"""`jit edit` end to end on a tiny run folder: each operation against `jit sample`, and bad inputs that fail
in one line with nothing written."""

import numpy as np
import pytest
from evaluation.test_evaluate import tiny_run  # noqa: F401 (fixture)
from PIL import Image

from jit_diffusion.cli import main
from jit_diffusion.data.image_folder import center_crop_arr, image_to_tensor


@pytest.fixture
def inputs(tmp_path):
    """Three images of other sizes and formats: a wide RGB PNG, an RGBA PNG, a grayscale JPEG."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8), "RGBA").save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(folder / "c.jpg")
    return folder


def cropped(folder) -> np.ndarray:
    """The inputs as the model sees them, uint8 (N, 8, 8, 3)."""
    return np.stack([image_to_tensor(center_crop_arr(Image.open(p), 8)).permute(1, 2, 0).numpy()
                     for p in sorted(folder.iterdir())])  # fmt: skip


def edit(run, operation, *extra) -> int:
    return main(["edit", operation, str(run), "--steps", "4", "--device", "cpu", *extra])


def npz(path) -> np.ndarray:
    return np.load(path)["arr_0"]


def test_img2img_strength_one_is_jit_sample_and_zero_the_inputs(tiny_run, inputs, tmp_path):  # noqa: F811
    assert main(["sample", str(tiny_run), "--classes", "green", "--per-class", "3", "--cfg", "2", "--steps", "4",
                 "--seed", "5", "--device", "cpu", "--npz", str(tmp_path / "s.npz")]) == 0  # fmt: skip
    assert edit(tiny_run, "img2img", "--input", str(inputs), "--strength", "1", "--classes", "green", "--cfg", "2",
                "--seed", "5", "--npz", str(tmp_path / "e.npz"), "--grid", str(tmp_path / "e.png")) == 0  # fmt: skip
    assert np.array_equal(npz(tmp_path / "e.npz"), npz(tmp_path / "s.npz"))
    assert edit(tiny_run, "img2img", "--input", str(inputs), "--strength", "0", "--npz", str(tmp_path / "z.npz")) == 0
    assert np.array_equal(npz(tmp_path / "z.npz"), cropped(inputs))
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_inpaint_with_a_box_and_with_masks(tiny_run, inputs, tmp_path):  # noqa: F811
    assert edit(tiny_run, "inpaint", "--input", str(inputs), "--box", "0,2,5,8", "--classes", "0,1,2",
                "--png-dir", str(tmp_path / "out"), "--npz", str(tmp_path / "box.npz")) == 0  # fmt: skip
    out, original = npz(tmp_path / "box.npz"), cropped(inputs)
    keep = np.ones((8, 8), dtype=bool)
    keep[2:8, 0:5] = False
    assert np.array_equal(out[:, keep], original[:, keep]) and not np.array_equal(out[:, ~keep], original[:, ~keep])
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    Image.fromarray(np.zeros((40, 30), dtype=np.uint8)).save(tmp_path / "black.png")
    assert edit(tiny_run, "inpaint", "--input", str(inputs), "--mask", str(tmp_path / "black.png"),
                "--npz", str(tmp_path / "black.npz")) == 0  # fmt: skip
    assert np.array_equal(npz(tmp_path / "black.npz"), original)


def test_reconstruct_prints_the_error_and_invert_writes_the_noise(tiny_run, inputs, tmp_path, capsys):  # noqa: F811
    capsys.readouterr()
    assert edit(tiny_run, "reconstruct", "--input", str(inputs / "a.png")) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("reconstruction error (heun, 4 steps, cfg 1.0): mean |error|") and "PSNR" in line
    assert edit(tiny_run, "invert", "--input", str(inputs), "--noise-out", str(tmp_path / "noise.npz")) == 0
    saved = np.load(tmp_path / "noise.npz")
    assert saved["noise"].shape == (3, 3, 8, 8) and saved["noise"].dtype == np.float32
    assert saved["labels"].tolist() == [4, 4, 4]  # no --classes: the null class


def test_interpolate_ends_are_jit_sample_and_an_animation_is_written(tiny_run, tmp_path):  # noqa: F811
    for cls in ("blue", "red"):
        assert main(["sample", str(tiny_run), "--classes", cls, "--per-class", "1", "--steps", "4", "--cfg", "2",
                     "--device", "cpu", "--npz", str(tmp_path / f"{cls}.npz")]) == 0  # fmt: skip
    assert edit(tiny_run, "interpolate", "--classes", "blue,red", "--frames", "5", "--cfg", "2",
                "--npz", str(tmp_path / "f.npz"), "--animation", str(tmp_path / "f.gif")) == 0  # fmt: skip
    frames = npz(tmp_path / "f.npz")
    assert frames.shape == (5, 8, 8, 3)
    assert np.array_equal(frames[0], npz(tmp_path / "blue.npz")[0])
    assert np.array_equal(frames[-1], npz(tmp_path / "red.npz")[0])
    with Image.open(tmp_path / "f.gif") as gif:
        assert gif.n_frames == 8  # forth and back


def test_swap_writes_the_target_class(tiny_run, inputs, tmp_path):  # noqa: F811
    assert edit(tiny_run, "swap", "--input", str(inputs), "--classes", "blue", "--to", "red", "--strength", "0.6",
                "--npz", str(tmp_path / "s.npz")) == 0  # fmt: skip
    saved = np.load(tmp_path / "s.npz")
    assert saved["labels"].tolist() == [3, 3, 3] and not np.array_equal(saved["arr_0"], cropped(inputs))


@pytest.mark.parametrize(
    "operation, extra, message",
    [
        ("img2img", ["--strength", "1.5"], "--strength must be in [0, 1], got 1.5"),
        ("inpaint", ["--box", "0,0,9,4"], "--box 0,0,9,4 is out of range"),
        ("inpaint", [], "inpaint needs exactly one of --mask PNG and --box"),
        ("inpaint", ["--mask", "COLOUR"], "is a colour image; a mask must be black and white"),
        ("img2img", ["--classes", "0,1"], "--classes gives 2 classes for 3 input images"),
        ("img2img", ["--classes", "purple"], "unknown class 'purple'"),
        ("img2img", ["--input", "BROKEN"], "cannot read"),
        ("swap", ["--to", "blue,red"], "one class for --to"),
    ],
)
def test_bad_inputs_fail_in_one_line_and_write_nothing(tiny_run, inputs, tmp_path, capsys, operation, extra,  # noqa: F811
                                                       message):  # fmt: skip
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 1] = 200
    Image.fromarray(colour).save(tmp_path / "colour.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    extra = [{"COLOUR": str(tmp_path / "colour.png"), "BROKEN": str(tmp_path / "broken.png")}.get(e, e) for e in extra]
    if "--input" not in extra:
        extra = ["--input", str(inputs), *extra]
    if operation == "swap":
        extra = [*extra, "--strength", "0.5"]
    outputs = [tmp_path / "out.npz", tmp_path / "grid.png", tmp_path / "pngs"]
    code = edit(tiny_run, operation, *extra, "--npz", str(outputs[0]), "--grid", str(outputs[1]),
                "--png-dir", str(outputs[2]))  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not any(p.exists() for p in outputs)


def test_nothing_to_write_is_refused_first(tiny_run, inputs, capsys):  # noqa: F811
    assert edit(tiny_run, "img2img", "--input", str(inputs)) == 2
    assert "nothing to write" in capsys.readouterr().err
