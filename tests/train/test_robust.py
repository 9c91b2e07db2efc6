"""Long runs survive: bad images mid-run, preemption signals, a full disk, out of memory, truncated checkpoints."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from test_train import ENV, TINY, _assert_bitwise_equal, _final_weights, _jit, _wait_for
from test_train_parts import TinyImages, one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)

from jit_diffusion import cli
from jit_diffusion.core.errors import UserError
from jit_diffusion.data.cache import _shrink
from jit_diffusion.data.datasets import CachedDataset, ImageFolderDataset, build_cache
from jit_diffusion.data.image_folder import CorruptImageError
from jit_diffusion.formats.checkpoint import (
    CheckpointWriteError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from jit_diffusion.formats.loading import load_model
from jit_diffusion.train.draws import SubstitutingDataset
from jit_diffusion.train.health import default_bad_image_limit
from jit_diffusion.train.signals import Preemption, parse_signals
from jit_diffusion.train.trainer import Trainer


def plant_bad_images(root: Path, picks: list[str]) -> list[Path]:
    """Spoil existing images in place (the file list stays): truncated, empty, not an image at all."""
    spoilers = [lambda b: b[:60], lambda b: b"", lambda b: b"this is not an image, just text"]
    bad = []
    for relative, spoil in zip(picks, spoilers):
        path = root / relative
        path.write_bytes(spoil(path.read_bytes()))
        bad.append(path)
    return bad


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- bad images ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_images_are_replaced_deterministically(tmp_path, capsys):
    """400 images, 3 spoiled: one epoch draws each once; the run names each once, counts 3, and equals
    a run on the same folder where each bad file holds the substitute the run chose."""
    clean = make_image_folder(tmp_path / "clean", num_classes=4, per_class=100)
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    bad = plant_bad_images(data, ["class_0/img_0_5.png", "class_1/img_1_17.png", "class_3/img_3_60.png"])
    common = [*TINY, "--batch-size", "40", "--steps", "10", "--ckpt-every", "10", "--log-every", "5"]
    assert cli.main(["train", *common, "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"bad image (\S+) \(.*?\): replaced by (\S+) ", out)
    assert sorted(Path(p) for p, _ in lines) == sorted(bad)  # each named exactly once
    assert "3 bad image(s) replaced" in out
    for path, substitute in lines:  # same class, a good file
        assert Path(substitute).parent == Path(path).parent and Path(substitute) not in bad
        shutil.copyfile(substitute, clean / Path(path).relative_to(data))
    assert cli.main(["train", *common, "--data", str(clean), "--out", str(tmp_path / "replaced")]) == 0
    _assert_bitwise_equal(_final_weights(tmp_path / "run"), _final_weights(tmp_path / "replaced"))


def test_strict_data_and_max_bad_images_stop_with_one_line(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", num_classes=4, per_class=10)
    bad = plant_bad_images(data, ["class_0/img_0_1.png", "class_1/img_1_2.png", "class_2/img_2_3.png"])
    common = [*TINY, "--data", str(data), "--steps", "10", "--log-every", "1", "--ckpt-every", "100"]
    assert cli.main(["train", *common, "--strict-data", "--out", str(tmp_path / "strict")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "cannot decode image" in line and any(str(p) in line for p in bad)

    assert cli.main(["train", *common, "--max-bad-images", "1", "--out", str(tmp_path / "limit")]) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert "more than --max-bad-images 1" in line and "jit data check" in line
    stopped_at = read_checkpoint(latest_checkpoint(tmp_path / "limit"))["step"]
    assert f"stopped at step {stopped_at}" in line and stopped_at < 10
    assert captured.out.count("bad image ") >= 2  # stopped at the first log step with more than 1


def test_substitute_is_a_function_of_seed_step_and_position(tmp_path):
    data = make_image_folder(tmp_path / "data", num_classes=2, per_class=6)
    bad = plant_bad_images(data, ["class_1/img_1_3.png"])[0]
    folder = ImageFolderDataset(data, 16)
    index = folder.paths.index(bad)
    items = SubstitutingDataset(folder, seed=0)
    image, label, record = items[(index, 7, 3)]
    assert label == 1 and record.index == index and folder.labels[record.substitute] == 1
    assert torch.equal(image, folder[record.substitute][0])
    assert items[(index, 7, 3)][2] == record  # same key, same substitute
    picks = {items[(index, step, position)][2].substitute for step in range(4) for position in range(4)}
    assert len(picks) > 1 and index not in picks
    assert items[(0, 7, 3)][2] is None  # good images pass through
    with pytest.raises(CorruptImageError, match=str(bad)):
        SubstitutingDataset(folder, seed=0, strict=True)[(index, 7, 3)]
    lonely = make_image_folder(tmp_path / "lonely", num_classes=2, per_class=1)
    plant_bad_images(lonely, ["class_0/img_0_0.png"])
    with pytest.raises(CorruptImageError, match="no other image of its class"):
        SubstitutingDataset(ImageFolderDataset(lonely, 16), seed=0)[(0, 0, 0)]
    assert default_bad_image_limit(400) == 10 and default_bad_image_limit(1_281_167) == 1281


def test_data_check_finds_every_planted_file(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", num_classes=3, per_class=12)
    assert cli.main(["data", "check", str(data), "--workers", "0"]) == 0
    assert "checked 36 images" in capsys.readouterr().out
    bad = plant_bad_images(data, ["class_0/img_0_4.png", "class_1/img_1_0.png", "class_2/img_2_11.png"])
    dangling = data / "class_2" / "moved.png"
    dangling.symlink_to(data / "class_2" / "gone.png")  # a link to nothing: cannot be read
    bad.append(dangling)
    assert cli.main(["data", "check", str(data), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    named = re.findall(r"^bad: (\S+): ", out, flags=re.M)
    assert sorted(map(Path, named)) == sorted(bad)
    assert "checked 37 images" in out and "4 bad" in out


def test_data_cache_leaves_out_bad_files(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", num_classes=2, per_class=5)
    bad = plant_bad_images(data, ["class_0/img_0_2.png", "class_1/img_1_4.png"])
    out = tmp_path / "cache"
    assert cli.main(["data", "cache", str(data), "--img-size", "16", "--out", str(out), "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert all(f"skipped {p}" in printed for p in bad) and "cached 8 images" in printed
    cached, folder = CachedDataset(out), ImageFolderDataset(data, 16)
    good = [i for i, p in enumerate(folder.paths) if p not in bad]
    assert cached.labels.tolist() == folder.labels[good].tolist()
    assert all(torch.equal(cached[k][0], folder[i][0]) for k, i in enumerate(good))
    for path in folder.paths:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 10 images"):
        build_cache(ImageFolderDataset(data, 16), tmp_path / "none", progress=False)


def test_data_cache_with_bad_files_is_shrunk_in_place(tmp_path):
    """Rows of undecodable images are cut off the end of images.npy; the header keeps its length."""
    data = make_image_folder(tmp_path / "data", num_classes=2, per_class=6)
    full = build_cache(ImageFolderDataset(data, 16), tmp_path / "full", batch_size=4, progress=False)
    bad = plant_bad_images(data, ["class_0/img_0_0.png", "class_1/img_1_3.png", "class_1/img_1_5.png"])
    path = build_cache(ImageFolderDataset(data, 16), tmp_path / "cache", batch_size=4, progress=False)
    images = np.load(path / "images.npy", mmap_mode="r")
    assert images.shape == (9, 3, 16, 16) and images.dtype == np.uint8
    header_bytes = images.offset  # where the rows start, as numpy reads the header
    assert header_bytes == np.load(full / "images.npy", mmap_mode="r").offset and header_bytes % 64 == 0
    assert os.path.getsize(path / "images.npy") == header_bytes + 9 * 3 * 16 * 16
    folder = ImageFolderDataset(data, 16)
    good = [i for i, p in enumerate(folder.paths) if p not in bad]
    assert np.array_equal(images, np.stack([folder[i][0].numpy() for i in good]))


def test_shrink_npy_in_place(tmp_path):
    """Both header versions; a count with fewer digits pads the header instead of moving the data."""
    rows = np.arange(12345 * 6, dtype=np.int32).reshape(12345, 2, 3)
    for version in [(1, 0), (2, 0)]:
        npy = tmp_path / f"v{version[0]}.npy"
        with open(npy, "wb") as f:
            np.lib.format.write_array(f, rows, version=version)
        offset = np.load(npy, mmap_mode="r").offset
        _shrink(npy, 7)
        kept = np.load(npy, mmap_mode="r")
        assert kept.offset == offset and np.array_equal(kept, rows[:7])
        assert os.path.getsize(npy) == offset + 7 * rows[0].nbytes
    with pytest.raises(ValueError, match="cannot shrink"):
        _shrink(npy, 8)


# --- preemption -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resume_is_bitwise(tmp_path):
    data = make_image_folder(tmp_path / "data")
    common = [*TINY, "--data", str(data), "--steps", "16", "--ckpt-every", "4"]
    full = _jit("train", *common, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    run = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "jit_diffusion.cli", "train", *common, "--out", str(run)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(run / "checkpoints" / "step_00000004.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    stopped_at = read_checkpoint(latest_checkpoint(run))["step"]
    assert 4 < stopped_at < 16
    assert f"SIGTERM received during step {stopped_at}: saving a checkpoint" in out  # the step it was in
    assert f"step_{stopped_at:08d}.pt at step {stopped_at}; stopping" in out
    resumed = _jit("train", *common, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _assert_bitwise_equal(_final_weights(tmp_path / "full"), _final_weights(run))


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
def test_sigterm_under_torchrun_every_rank_stops_at_one_step(tmp_path):
    """Only rank 1 gets the signal; the all-reduce at the next log step stops both ranks there."""
    data = make_image_folder(tmp_path / "data")
    common = [*TINY, "--data", str(data), "--steps", "16", "--ckpt-every", "4"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "jit_diffusion.cli", "train", *common]  # fmt: skip
    full = subprocess.run([*torchrun, "--out", str(tmp_path / "full")], capture_output=True, text=True, env=ENV,
                          timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "stopped"
    proc = subprocess.Popen([*torchrun, "--out", str(run)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(run / "checkpoints" / "step_00000004.pt", proc)
    workers = [pid for pid in _children(proc.pid) if b"jit_diffusion.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    rank_1 = next(pid for pid in workers if b"LOCAL_RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes())
    os.kill(rank_1, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ckpt = read_checkpoint(latest_checkpoint(run))
    assert 4 < ckpt["step"] < 16 and ckpt["step"] % 2 == 0  # a log step (--log-every 2)
    assert len(ckpt["rng"]) == 2 and "saving a checkpoint" in out
    resumed = subprocess.run([*torchrun, "--out", str(run), "--resume"], capture_output=True, text=True, env=ENV,
                             timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_bitwise_equal(_final_weights(tmp_path / "full"), _final_weights(run))


def test_second_signal_during_the_save_and_requeue_code(tmp_path, image_folder, monkeypatch, capsys):
    import jit_diffusion.formats.checkpoint as ck
    from jit_diffusion.diffusion.flow import FlowMatching

    real_call, real_save = FlowMatching.__call__, ck.torch.save
    calls = {"forward": 0, "save": 0}

    def forward(self, *args, **kwargs):
        calls["forward"] += 1
        if calls["forward"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 3
        return real_call(self, *args, **kwargs)

    def save(obj, f, *args, **kwargs):
        calls["save"] += 1
        f.write(b"")
        os.kill(os.getpid(), signal.SIGTERM)  # and again in the middle of writing the checkpoint
        os.kill(os.getpid(), signal.SIGUSR1)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(FlowMatching, "__call__", forward)
    monkeypatch.setattr(ck.torch, "save", save)
    before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    code = cli.main(["train", *TINY, "--data", str(image_folder), "--steps", "10", "--ckpt-every", "100",
                     "--requeue-exit-code", "3", "--out", str(run)])  # fmt: skip
    assert code == 3 and calls["save"] == 1
    assert "SIGTERM received during step 3" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003.pt"] and not list(run.glob("checkpoints/.*"))
    assert verify_checkpoint(latest_checkpoint(run)) is None and load_model(run)[1].step == 3
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored after the run


def test_preempt_signal_names():
    assert parse_signals("SIGTERM,usr1") == [signal.SIGTERM, signal.SIGUSR1]
    assert parse_signals("none") == [] and parse_signals("") == []
    for wrong in ("SIGNOPE", "KILL"):
        with pytest.raises(UserError, match="--preempt-signals"):
            parse_signals(wrong)
    preemption = Preemption("SIGUSR2")
    before = signal.getsignal(signal.SIGUSR2)
    preemption.install()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert preemption.requested and preemption.received == "SIGUSR2"
    preemption.restore()
    assert signal.getsignal(signal.SIGUSR2) is before


# --- a full disk, a read-only folder, out of memory --------------------------------------------


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, image_folder, monkeypatch, capsys):
    import jit_diffusion.formats.checkpoint as ck

    real_save = ck.torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ck.torch, "save", save)
    run = tmp_path / "run"
    code = cli.main(["train", *TINY, "--data", str(image_folder), "--steps", "6", "--ckpt-every", "2",
                     "--out", str(run)])  # fmt: skip
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert f"to {run / 'checkpoints'}: No space left on device (needs about" in line and " MB free there" in line
    assert "step_00000002.pt is intact" in line
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002.pt"] and not list(run.glob("checkpoints/.*"))
    assert load_model(run)[1].step == 2


def test_read_only_folder_is_one_line(tmp_path, monkeypatch):
    save_checkpoint({"w": torch.zeros(1000)}, tmp_path, 1)
    import jit_diffusion.formats.checkpoint as ck

    def read_only(path, write):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(ck, "atomic_write_bytes", read_only)
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint step_00000002.pt to .*checkpoints: "
                                                    r"Read-only file system \(needs about 0.0 MB"):  # fmt: skip
        save_checkpoint({"w": torch.zeros(1000)}, tmp_path, 2)
    assert latest_checkpoint(tmp_path).name == "step_00000001.pt"

    def bad_descriptor(path, write):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(ck, "atomic_write_bytes", bad_descriptor)
    with pytest.raises(OSError, match="Bad file descriptor") as err:  # other errors pass through unchanged
        save_checkpoint({}, tmp_path, 3)
    assert not isinstance(err.value, CheckpointWriteError)


def test_out_of_memory_names_the_setting_and_the_remedies(tmp_path, image_folder, monkeypatch, capsys):
    from jit_diffusion.models.jit import JiT

    def forward(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(JiT, "forward", forward)
    code = cli.main(["train", *TINY, "--data", str(image_folder), "--steps", "4", "--out", str(tmp_path / "run")])
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    for needle in ("out of memory", "JiT-Ti/4", "16x16 px", "--batch-size 8", "--grad-accum 2", "--grad-checkpointing",
                   "--fsdp", "smaller --batch-size"):
        assert needle in line, needle


# --- checkpoints verified on load --------------------------------------------------------------


def test_verify_checkpoint_finds_truncation_and_a_bad_pickle(tmp_path):
    path = save_checkpoint({"w": torch.arange(10_000.0), "step": 1}, tmp_path, 1)
    assert verify_checkpoint(path) is None
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in verify_checkpoint(cut)
    flipped = bytearray(data)
    at = data.index(b"data.pkl") + 60  # inside the pickle record's bytes
    flipped[at] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    assert verify_checkpoint(tmp_path / "flipped.pt") is not None


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_skipped_on_resume(tmp_path, capsys):
    data = TinyImages()

    def config(**overrides):
        return tiny_config(tmp_path, ema_decays=[0.9, 0.5], **overrides)

    Trainer(config(steps=6, ckpt_every=6, out=str(tmp_path / "full")), dataset=data).run()
    Trainer(config(steps=4, ckpt_every=2), dataset=data).run()
    newest = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    with pytest.warns(UserWarning, match=f"skipping checkpoint {re.escape(str(newest))}: truncated"):
        resumed = Trainer(config(steps=6, ckpt_every=2), resume=True, dataset=data)
    assert resumed.step == 2 and "step_00000002.pt at step 2" in capsys.readouterr().out
    resumed.run()
    _assert_bitwise_equal(_final_weights(tmp_path / "full"), _final_weights(tmp_path / "run"))
