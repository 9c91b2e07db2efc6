"""Trainer tests: exact resume after SIGKILL, multi-process equivalence, errors, NaN, atomic checkpoints."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, max_abs_diff, torchrun_jit

from jit_diffusion import cli
from jit_diffusion.formats.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from jit_diffusion.formats.loading import load_model

# a tiny run: JiT-Ti/4 at 16 px (16 tokens) on 32 images, batch 8
TINY = ["--model", "JiT-Ti/4", "--img-size", "16", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2",
        "--ema", "0.9,0.5", "--log-every", "2", "--sample-every", "0", "--keep-last", "10"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _jit(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jit_diffusion.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=600, **kwargs)


def _final_weights(run_dir: Path) -> dict:
    ckpt = read_checkpoint(latest_checkpoint(run_dir))
    return {"model": ckpt["model"], **ckpt["ema"], "step": ckpt["step"]}


def _assert_bitwise_equal(a: dict, b: dict):
    assert a["step"] == b["step"]
    for key in ("model", "ema1", "ema2"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}/{name} differs"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the training process ``proc`` has written ``path`` (it must still be running)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "training ended before it could be signalled"
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    data = make_image_folder(tmp_path / "data")
    common = [*TINY, "--data", str(data), "--steps", "12", "--ckpt-every", "4"]
    full = _jit("train", *common, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jit_diffusion.cli", "train", *common, "--out", str(run)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(run / "checkpoints" / "step_00000004.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = read_checkpoint(latest_checkpoint(run))["step"]
    assert steps_done < 12
    resumed = _jit("train", *common, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    _assert_bitwise_equal(_final_weights(tmp_path / "full"), _final_weights(run))


@pytest.mark.slow
def test_resume_refuses_changed_trajectory(tmp_path, image_folder):
    run = tmp_path / "run"
    assert _jit("train", *TINY, "--data", str(image_folder), "--steps", "2", "--out", str(run)).returncode == 0
    res = _jit("train", *TINY, "--data", str(image_folder), "--steps", "4", "--out", str(run), "--resume",
               "--lr", "5e-4")
    assert res.returncode == 2
    assert "lr: saved 0.001, now 0.0005" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """torchrun with 2 gloo processes (DDP, and FSDP2 with a resume) == 1 process on the same global batch
    (and == gradient accumulation).

    Draws and data order depend only on the position in the global batch, so the runs differ only in
    the order of floating-point reductions; after 6 AdamW steps weights and EMAs agree to 1e-5 (max abs).
    """
    data = make_image_folder(tmp_path / "data")
    common = [*TINY, "--data", str(data), "--steps", "6", "--ckpt-every", "6", "--label-drop", "0.3"]
    one = _jit("train", *common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    accum = _jit("train", *common, "--grad-accum", "2", "--out", str(tmp_path / "accum"))
    assert accum.returncode == 0, accum.stderr
    def torchrun(*extra):
        torchrun_jit("train", *common, *extra)

    torchrun("--out", str(tmp_path / "two"))
    # FSDP2: 3 steps, then resume (sharded optimizer/EMA state re-loaded from full tensors) to 6
    torchrun("--fsdp", "--out", str(tmp_path / "fsdp"), "--steps", "3")
    torchrun("--fsdp", "--out", str(tmp_path / "fsdp"), "--resume")
    ref = _final_weights(tmp_path / "one")
    ckpt_two = read_checkpoint(latest_checkpoint(tmp_path / "two"))
    assert ckpt_two["world_size"] == 2 and len(ckpt_two["rng"]) == 2
    for name in ("two", "accum", "fsdp"):
        other = _final_weights(tmp_path / name)
        assert other["step"] == 6
        for key in ("model", "ema1", "ema2"):
            worst = max_abs_diff(ref[key], other[key])
            print(f"{name} vs one process, {key}: max abs diff {worst:.2e}")
            assert worst < 1e-5, (name, key, worst)
    # the weights moved far from their initial values, so agreeing to 1e-5 is not trivial
    from jit_diffusion import JiT

    torch.manual_seed(0)  # the trainer seeds with --seed before building the model
    init = JiT(**ckpt_two["model_config"]).state_dict()
    assert max_abs_diff(init, ref["model"]) > 1e-3


def _one_line_error(res: subprocess.CompletedProcess, *needles: str):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_clear_errors(tmp_path, image_folder):
    base = ["--batch-size", "8", "--steps", "2", "--sample-every", "0"]
    _one_line_error(_jit("train", "--model", "JiT-Q/7", "--data", str(image_folder), *base, "--out",
                         str(tmp_path / "a")), "--model", "unknown model preset 'JiT-Q/7'")
    _one_line_error(_jit("train", "--model", "JiT-B/16", "--img-size", "100", "--data", str(image_folder), *base,
                         "--out", str(tmp_path / "b")), "--img-size", "not a multiple of the patch size 16")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_jit("train", *TINY, "--data", str(empty), "--steps", "2", "--out", str(tmp_path / "c")),
                    str(empty))
    corrupt = make_image_folder(tmp_path / "corrupt", num_classes=2, per_class=4)
    bad = corrupt / "class_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _one_line_error(_jit("train", *TINY, "--data", str(corrupt), "--steps", "3", "--strict-data", "--out",
                         str(tmp_path / "d")), str(bad))  # without --strict-data it is replaced (test_robust.py)
    res = subprocess.run([sys.executable, "-m", "jit_diffusion.cli", "train", *TINY, "--data", "emoji", "--steps",
                          "1", "--out", str(tmp_path / "e")], capture_output=True, text=True, timeout=600,
                         env={**ENV, "JIT_EMOJI_FONT": str(tmp_path / "no-such-font.ttf"),
                              "JIT_CACHE_DIR": str(tmp_path / "cache")})
    _one_line_error(res, "fonts-noto-color-emoji")


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, image_folder, monkeypatch, capsys):
    from jit_diffusion.diffusion.flow import FlowMatching

    real_call = FlowMatching.__call__
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = real_call(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(FlowMatching, "__call__", poisoned)
    run = tmp_path / "run"
    code = cli.main(["train", *TINY, "--data", str(image_folder), "--steps", "20", "--ckpt-every", "4",
                     "--out", str(run)])
    assert code == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "step_00000004.pt" in err
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004.pt"]
    model, info = load_model(run, weights="ema1")
    assert info.step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


KILL_IN_WRITE = textwrap.dedent("""
    import os, signal, sys, torch
    import jit_diffusion.formats.checkpoint as ck
    real_save = torch.save
    count = {"n": 0}
    def save(obj, f, *a, **k):
        count["n"] += 1
        if count["n"] == 2:  # second checkpoint: write half, then die
            f.write(b"PK\\x03\\x04 partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    ck.torch.save = save
    from jit_diffusion.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous(tmp_path, image_folder):
    run = tmp_path / "run"
    script = tmp_path / "kill_in_write.py"
    script.write_text(KILL_IN_WRITE)
    res = subprocess.run([sys.executable, str(script), "train", *TINY, "--data", str(image_folder), "--steps", "8",
                          "--ckpt-every", "2", "--out", str(run)], capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002.pt"
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002.pt"]
    assert list((run / "checkpoints").glob("*.tmp*")), "the partial write should be left as a temp file"
    model, info = load_model(run)
    assert info.step == 2
    resumed = _jit("train", *TINY, "--data", str(image_folder), "--steps", "4", "--ckpt-every", "2", "--out",
                   str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not list((run / "checkpoints").glob("*.tmp*"))
    assert read_checkpoint(latest_checkpoint(run))["step"] == 4


@pytest.mark.slow
def test_train_then_sample_end_to_end(tmp_path, image_folder):
    run = tmp_path / "run"
    res = _jit("train", *TINY, "--data", str(image_folder), "--steps", "4", "--ckpt-every", "4",
               "--sample-every", "4", "--sample-steps", "2", "--sample-per-class", "2", "--out", str(run))
    assert res.returncode == 0, res.stderr
    assert (run / "samples" / "step_00000004.png").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    cfg = (run / "config.json").read_text()
    assert '"model": "JiT-Ti/4"' in cfg and '"num_classes": 4' in cfg
    res = _jit("sample", str(run), "--classes", "0,class_2", "--per-class", "3", "--steps", "3", "--cfg", "2.0",
               "--grid", str(tmp_path / "grid.png"), "--npz", str(tmp_path / "s.npz"),
               "--png-dir", str(tmp_path / "pngs"))
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "s.npz") as f:
        assert f["arr_0"].shape == (6, 16, 16, 3) and f["arr_0"].dtype == np.uint8
        assert f["labels"].tolist() == [0, 0, 0, 2, 2, 2]
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == ((3 * 18 + 2) * 4, (2 * 18 + 2) * 4)  # 3 per row, 2 rows, 2 px pad, x4 upscale
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 6


@pytest.mark.slow
def test_unconditional_flat_folder(tmp_path):
    data = make_image_folder(tmp_path / "flat", num_classes=2, per_class=8, flat=True)
    run = tmp_path / "run"
    res = _jit("train", *TINY, "--data", str(data), "--steps", "2", "--out", str(run))
    assert res.returncode == 0, res.stderr
    model, info = load_model(run)
    assert info.num_classes == 0 and model.y_embedder.embedding_table.weight.shape[0] == 1


def test_worker_errors_print_as_one_line():
    from jit_diffusion.cli import one_line
    from jit_diffusion.data.datasets import CorruptImageError

    worker_style = CorruptImageError("Caught CorruptImageError in DataLoader worker process 0.\n"
                                     "Original Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                                     "jit_diffusion.data.CorruptImageError: cannot decode image /d/a.png: bad\n")
    assert one_line(worker_style) == "cannot decode image /d/a.png: bad"
    assert one_line(ValueError("plain message")) == "plain message"


@pytest.mark.slow
def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, image_folder, capsys):
    """Training again into a run folder without --resume changes nothing and says so in one line;
    --overwrite starts afresh, removing the old run's files and only those."""
    run = tmp_path / "run"
    common = [*TINY, "--data", str(image_folder), "--out", str(run)]
    assert cli.main(["train", *common, "--steps", "6", "--ckpt-every", "2", "--seed", "1", "--sample-every", "6",
                     "--sample-steps", "1", "--sample-per-class", "1"]) == 0  # fmt: skip
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "keep.txt").write_text("also mine")
    files = lambda: {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    second = ["--steps", "3", "--ckpt-every", "1", "--keep-last", "2", "--seed", "2"]
    capsys.readouterr()
    assert cli.main(["train", *common, *second]) == 2
    message = f"{run} holds a run: pass --resume or another --out (or --overwrite)"
    assert capsys.readouterr().err == f"jit train: error: {message}\n"
    assert files() == before
    assert cli.main(["train", *common, *second, "--resume", "--overwrite"]) == 2
    assert "not both" in capsys.readouterr().err and files() == before
    assert cli.main(["train", *common, *second, "--overwrite"]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002.pt", "step_00000003.pt"]
    assert read_checkpoint(latest_checkpoint(run))["config"]["seed"] == 2
    assert json.loads((run / "config.json").read_text())["seed"] == 2
    assert len(list((run / "tb").iterdir())) == 1 and not (run / "samples").exists()  # the old run's are gone
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "keep.txt").exists()
