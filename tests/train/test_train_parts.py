"""The trainer's parts, each alone: batch sampler, draws, schedule, optimizer groups, flags, state,
checkpoint pruning and preview grids (in process, tiny model, no subprocess)."""

import argparse
import json

import numpy as np
import pytest
import torch

from jit_diffusion.core import rng
from jit_diffusion.core.errors import UserError
from jit_diffusion.diffusion.flow import FlowMatching
from jit_diffusion.formats.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint, save_checkpoint
from jit_diffusion.train.config import TrainConfig, compiles
from jit_diffusion.train.draws import Augment, StepBatchSampler
from jit_diffusion.train.flags import add_parser, config_from_args
from jit_diffusion.train.optim import learning_rate, param_groups
from jit_diffusion.train.trainer import Trainer


@pytest.fixture(autouse=True)
def one_thread():
    """In-process training on one thread (as the subprocess tests run): the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyImages(torch.utils.data.Dataset):
    """n random 16 px uint8 images in ``num_classes`` classes, in memory."""

    def __init__(self, n: int = 32, num_classes: int = 4, size: int = 16):
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
        self.labels = np.arange(n, dtype=np.int64) % max(num_classes, 1)
        self.num_classes, self.class_names, self.image_size = num_classes, [f"c{i}" for i in range(num_classes)], size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    base = dict(model="JiT-Ti/4", img_size=16, batch_size=8, lr=1e-3, warmup_steps=2, steps=4, ema_decays=[0.9],
                log_every=2, ckpt_every=100, sample_every=0, device="cpu", out=str(tmp_path / "run"))  # fmt: skip
    return TrainConfig(**{**base, **overrides})


# --- the batch sampler ----------------------------------------------------------------------------


def _take(sampler, count):
    it = iter(sampler)
    return [next(it) for _ in range(count)]


def test_sampler_visits_each_image_once_per_epoch():
    sampler = StepBatchSampler(n=20, global_batch=6, world=1, rank=0, accum=1, seed=3, start_step=0)
    assert sampler.steps_per_epoch == 3  # 18 of 20 images per epoch, the tail of 2 dropped
    epoch0, epoch1 = _take(sampler, 3), _take(sampler, 6)[3:]
    seen0 = [i for batch in epoch0 for i in batch]
    assert len(set(seen0)) == 18 and seen0 == sampler.epoch_order(0)[:18].tolist()
    assert [i for batch in epoch1 for i in batch] == sampler.epoch_order(1)[:18].tolist()
    assert sampler.epoch_order(0).tolist() != sampler.epoch_order(1).tolist()


def test_sampler_ranks_and_accumulation_split_the_global_batch():
    whole = _take(StepBatchSampler(n=40, global_batch=8, world=1, rank=0, accum=1, seed=0, start_step=0), 5)
    for world, accum in [(2, 1), (2, 2), (4, 2), (1, 4)]:
        per_rank = [_take(StepBatchSampler(n=40, global_batch=8, world=world, rank=r, accum=accum, seed=0,
                                           start_step=0), 5 * accum) for r in range(world)]  # fmt: skip
        for step in range(5):
            chunks = [per_rank[r][step * accum : (step + 1) * accum] for r in range(world)]
            joined = [i for chunk in chunks for batch in chunk for i in batch]
            assert joined == whole[step], (world, accum, step)
    sampler = StepBatchSampler(n=40, global_batch=8, world=2, rank=1, accum=2, seed=0, start_step=0)
    assert [sampler.first_position(a) for a in range(2)] == [4, 6]


def test_sampler_resumes_mid_epoch_and_across_epochs():
    full = _take(StepBatchSampler(n=24, global_batch=4, world=1, rank=0, accum=1, seed=5, start_step=0), 20)
    for start in (0, 3, 6, 13):
        resumed = _take(StepBatchSampler(n=24, global_batch=4, world=1, rank=0, accum=1, seed=5, start_step=start),
                        20 - start)  # fmt: skip
        assert resumed == full[start:]


# --- the per-step draws -----------------------------------------------------------------------------


def test_draws_are_the_objectives_logit_normal_and_label_drop():
    objective = FlowMatching(p_mean=-0.4, p_std=1.3, label_drop_prob=0.3)
    positions = torch.arange(4000)
    y = torch.arange(4000) % 7
    y_drop, t, noise = objective.counter_draws(y, (3, 2, 2), null_label=7, seed=11, step=5, positions=positions)
    normal = rng.normal(11, 5, rng.STREAM_TIME, positions, 1)[:, 0]
    assert torch.equal(t, torch.sigmoid(normal * 1.3 - 0.4))  # t = sigmoid(p_mean + p_std n)
    dropped = y_drop == 7
    assert torch.equal(y_drop[~dropped], y[~dropped]) and abs(dropped.float().mean().item() - 0.3) < 0.03
    assert noise.shape == (4000, 3, 2, 2) and abs(noise.std().item() - 1.0) < 0.02
    no_drop = FlowMatching(label_drop_prob=0.0).counter_draws(y, (3, 2, 2), 7, 11, 5, positions)[0]
    assert torch.equal(no_drop, y)


def test_augment_draws_depend_only_on_seed_step_and_position():
    augment = Augment(FlowMatching(label_drop_prob=0.5), seed=2, null_label=4)
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(8) % 4
    whole = augment(images, labels, step=3, positions=torch.arange(8))
    halves = [augment(images[i : i + 4], labels[i : i + 4], step=3, positions=torch.arange(i, i + 4)) for i in (0, 4)]
    for full, a, b in zip(whole, *halves):
        assert torch.equal(full, torch.cat([a, b]))
    x = whole[0]
    assert x.min() >= -1 and x.max() <= 1
    flipped = ~torch.isclose(x, images.float() / 127.5 - 1).flatten(1).all(1)
    assert torch.equal(x[flipped], (images[flipped].float() / 127.5 - 1).flip(-1))
    other_step = augment(images, labels, step=4, positions=torch.arange(8))
    assert not torch.equal(whole[3], other_step[3])


# --- schedule and optimizer ----------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule(schedule):
    cfg = TrainConfig(lr=1.0, schedule=schedule, min_lr=0.1)
    lrs = [learning_rate(s, cfg, warmup_steps=4, total_steps=14) for s in range(15)]
    assert lrs[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    if schedule == "constant":
        assert lrs[5:] == [1.0] * 10
    else:
        assert abs(lrs[9] - 0.55) < 1e-12 and abs(lrs[14] - 0.1) < 1e-12
        assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # falls monotonically after warm-up
        assert learning_rate(30, cfg, warmup_steps=4, total_steps=14) == pytest.approx(0.1)  # stays at min_lr
    assert TrainConfig(blr=5e-5, batch_size=1024).lr_value() == pytest.approx(2e-4)
    assert learning_rate(0, cfg, warmup_steps=0, total_steps=14) == 1.0  # no warm-up: the peak at once


def test_weight_decay_groups():
    from jit_diffusion import create_model

    model = create_model("JiT-Ti/4", num_classes=3)
    no_decay, decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 and not names[id(p)].endswith(".bias") for p in decay["params"])
    assert any(names[id(p)].endswith("norm1.weight") for p in no_decay["params"])
    assert all(names[id(p)] != "pos_embed" for p in decay["params"] + no_decay["params"])


# --- flags and config ------------------------------------------------------------------------------


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_compile_flags_and_default(tmp_path):
    assert config_from_args(_parse())[0].compile is None
    assert config_from_args(_parse("--compile"))[0].compile is True
    assert config_from_args(_parse("--no-compile"))[0].compile is False
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compiles(TrainConfig(), cuda) and not compiles(TrainConfig(compile=False), cuda)
    assert not compiles(TrainConfig(compile=True), cpu) and not compiles(TrainConfig(), cpu)


def test_resume_takes_the_saved_config_and_flags_override_it(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000002.pt").write_bytes(b"")
    saved = {**TrainConfig().__dict__, "lr": 0.5, "compile": True, "out": str(run), "resolved": {"lr": 0.5}}
    (run / "config.json").write_text(json.dumps(saved))
    cfg, resume = config_from_args(_parse("--out", str(run), "--resume", "--no-compile", "--steps", "9"))
    assert resume and cfg.lr == 0.5 and cfg.compile is False and cfg.steps == 9


def test_objective_is_built_from_the_config():
    cfg = TrainConfig(prediction="eps", loss="x", p_mean=0.1, p_std=0.2, noise_scale=2.0, t_eps=0.01, label_drop=0.3)
    assert cfg.objective() == FlowMatching("eps", "x", 0.1, 0.2, 0.01, 2.0, 0.3)
    assert TrainConfig().objective() == FlowMatching()  # one set of defaults


# --- checkpoints -----------------------------------------------------------------------------------


def test_keep_last_prunes_older_checkpoints(tmp_path):
    for step in range(1, 6):
        save_checkpoint({"step": step}, tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000005.pt"]
    assert latest_checkpoint(tmp_path).name == "step_00000005.pt"
    for step in range(6, 9):
        save_checkpoint({"step": step}, tmp_path, step, keep_last=0)  # 0 keeps everything
    assert len(list_checkpoints(tmp_path)) == 5


def test_trainer_keeps_last_checkpoints_and_state_round_trips(tmp_path):
    data = TinyImages()
    trainer = Trainer(tiny_config(tmp_path, ckpt_every=1, keep_last=2, steps=4), dataset=data)
    trainer.run()
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003.pt", "step_00000004.pt"]
    saved = read_checkpoint(latest_checkpoint(run))
    assert saved["step"] == 4 and saved["data_position"] == {"epoch": 1, "batch": 0}
    resumed = Trainer(tiny_config(tmp_path, ckpt_every=1, keep_last=2, steps=4), resume=True, dataset=data)
    assert resumed.step == 4
    again = resumed.state()
    for name, tensor in saved["ema"]["ema1"].items():
        assert torch.equal(again["ema"]["ema1"][name], tensor)
    assert torch.equal(again["rng"][0]["cpu"], saved["rng"][0]["cpu"])
    assert again["optimizer"]["state"].keys() == saved["optimizer"]["state"].keys()


def test_preview_grid_is_written(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, sample_per_class=2, sample_steps=2), dataset=TinyImages(num_classes=3))
    path = trainer.sample_grid()
    from PIL import Image

    assert path.name == "step_00000000.png"
    assert Image.open(path).size == ((2 * 18 + 2) * 4, (3 * 18 + 2) * 4)  # 2 per row, 3 rows, x4 upscale


# --- start-up checks of flags ----------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (dict(sample_interval=[0.5]), "--sample-interval expects two numbers min,max like 0.1,1.0, got [0.5]"),
    (dict(sample_interval=[0.9, 0.1]), "--sample-interval must satisfy 0 <= min <= max <= 1, got 0.9,0.1"),
    (dict(sample_steps=0), "--sample-steps must be an integer >= 1, got 0"),
    (dict(sample_per_class=0), "--sample-per-class must be an integer >= 1, got 0"),
    (dict(sample_method="dpm++2m", sample_steps=2, t_eps=0.0), "--t-eps must satisfy 0 < t_eps < 1"),
    (dict(t_eps=1.0), "--t-eps must satisfy 0 < t_eps < 1"),
    (dict(ckpt_every=-1), "--ckpt-every must be an integer >= 0, got -1"),
    (dict(log_every=0), "--log-every must be an integer >= 1, got 0"),
    (dict(grad_accum=0), "--grad-accum must be an integer >= 1, got 0"),
    (dict(batch_size=0), "--batch-size must be an integer >= 1, got 0"),
    (dict(keep_last=-1), "--keep-last must be an integer >= 0, got -1"),
    (dict(sample_every=-5), "--sample-every must be an integer >= 0, got -5"),
    (dict(steps=0), "--steps must be an integer >= 1, got 0"),
    (dict(num_workers=-1), "--num-workers must be an integer >= 0, got -1"),
    (dict(steps=None, epochs=0.0), "--epochs must be > 0, got 0"),
    (dict(max_minutes=-1.0), "--max-minutes must be > 0, got -1"),
    (dict(beta2=1.0), "--beta1/--beta2 must lie in [0, 1), got 0.9, 1"),
])  # fmt: skip
def test_bad_flags_are_one_line_errors_before_any_step(tmp_path, overrides, message):
    """Flags that used to fail at the first preview grid or after the first step (a ZeroDivisionError, an
    unpacking error) are refused when the trainer is built, before anything is written."""
    cfg = tiny_config(tmp_path, **overrides)
    with pytest.raises(UserError) as err:
        Trainer(cfg, dataset=TinyImages())
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,message", [("0.5", "expects two comma-separated numbers like 0.1,1.0, got '0.5'"),
                                          ("0.9,0.1", "must satisfy 0 <= min <= max <= 1, got 0.9,0.1")])  # fmt: skip
def test_sample_interval_flag_uses_the_sample_parser(text, message, capsys):
    """--sample-interval goes through jit sample's --interval parser: its message, not argparse's."""
    with pytest.raises(SystemExit):
        _parse("--sample-interval", text)
    assert f"argument --sample-interval: {message}" in capsys.readouterr().err
    assert _parse("--sample-interval", "0,0.75").sample_interval == (0.0, 0.75)


def test_ckpt_every_zero_saves_only_at_the_end(tmp_path):
    Trainer(tiny_config(tmp_path, ckpt_every=0, log_every=1, steps=3), dataset=TinyImages()).run()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000003.pt"]
