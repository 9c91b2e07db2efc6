"""A small JiT run folder for the studio tests: checkpoint with two EMAs, preview grids and a loss curve."""

import dataclasses
from pathlib import Path

import torch
from conftest import lively_jit
from PIL import Image

from jit_diffusion.formats.checkpoint import save_checkpoint
from jit_diffusion.models.config import preset_config

CONFIG = preset_config("JiT-Ti/4", input_size=16, num_classes=3)
NAMES = ["apple", "banana", "cherry"]


def make_run(root: Path) -> Path:
    """A run folder: a training checkpoint (raw, ema1, ema2), two preview grids and a loss in tb/."""
    model = lively_jit(CONFIG)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    emas = {f"ema{i}": {k: v + 0.02 * i * torch.randn_like(v) for k, v in raw.items()} for i in (1, 2)}
    ckpt = {"model": raw, "ema": emas, "model_config": dataclasses.asdict(CONFIG), "class_names": NAMES, "step": 20,
            "config": {"prediction": "x", "noise_scale": 1.0, "t_eps": 0.05, "sample_cfg": 2.0,
                       "sample_interval": [0.1, 1.0], "data": "fruit"}}  # fmt: skip
    run = root / "run"
    save_checkpoint(ckpt, run, 20)
    (run / "samples").mkdir()
    for step, shade in ((10, 60), (20, 180)):
        Image.new("RGB", (40, 20), (shade, 0, 0)).save(run / "samples" / f"step_{step:08d}.png")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tb")) as writer:
        for step, loss in ((5, 1.0), (10, 0.5), (15, 0.4)):
            writer.add_scalar("train/loss", loss, step)
    return run
