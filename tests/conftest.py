import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"


class Golden:
    """The golden tensors and metadata produced by running the public JiT code."""

    def __init__(self, path: Path):
        with safe_open(str(path), "pt") as f:
            self.meta = json.loads(f.metadata()["golden"])
            self.tensors = {k: f.get_tensor(k) for k in f.keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    @property
    def model_config(self) -> dict:
        return dict(self.meta["model_config"])

    def net_state_dict(self) -> dict[str, torch.Tensor]:
        return {k[len("net."):]: v for k, v in self.tensors.items() if k.startswith("net.")}

    def model(self):
        from jit_diffusion import JiT

        model = JiT(**self.model_config)
        model.load_state_dict(self.net_state_dict(), strict=True)
        return model.eval()


@pytest.fixture(scope="session")
def golden() -> Golden:
    return Golden(FIXTURES / "golden_small.safetensors")


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((FIXTURES / "official_state_dict_manifest.json").read_text())


PMF_OFFICIAL = FIXTURES / "pmf" / "pmf_tiny_official.pt"  # the public module's tiny state dict


@pytest.fixture(scope="session")
def pmf_golden() -> dict[str, torch.Tensor]:
    """The golden tensors of the public pMF module (forward u, v; 1- and 2-step samples)."""
    return load_file(str(FIXTURES / "pmf" / "pmf_tiny_golden.safetensors"))


@pytest.fixture(scope="session")
def pmf_official_state() -> dict[str, torch.Tensor]:
    return torch.load(PMF_OFFICIAL, weights_only=True)


def make_image_folder(root: Path, num_classes: int = 4, per_class: int = 8, size: int = 16, flat: bool = False) -> Path:
    """Write small PNGs: class k is a colour-tinted gradient with a bright square at a k-dependent place."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(num_classes):
        folder = root if flat else root / f"class_{k}"
        folder.mkdir(exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), dtype=np.float32)
            base[..., k % 3] = np.linspace(40, 200, size)[None, :]
            q = size // 4
            y0, x0 = (k // 2) * 2 * q, (k % 2) * 2 * q
            base[y0 : y0 + q, x0 : x0 + q] = 255
            base += rng.normal(0, 8, base.shape)
            Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(folder / f"img_{k}_{i}.png")
    return root


def torchrun_jit(*args, nproc: int = 2) -> None:
    """``jit ARGS`` under torchrun with ``nproc`` gloo processes of one thread each; asserts it succeeds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "jit_diffusion.cli", *map(str, args)]  # fmt: skip
    res = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def max_abs_diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two state dicts over ``a``'s keys."""
    return max((a[k] - b[k]).abs().max().item() for k in a)


def trained_source(root: Path, train, model: str, steps: int) -> dict:
    """A run of ``model`` at 16 px on a 4-class image folder, trained by ``train(*flags)`` for ``steps``
    steps: {"run", "data", "ckpt" (its latest checkpoint), "ema1" (that checkpoint's ema1 weights)}."""
    from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint, training_weights

    data = make_image_folder(root / "data")
    run = root / "run"
    assert train("--model", model, "--img-size", 16, "--data", data, "--steps", steps, "--out", run) == 0
    ckpt = read_checkpoint(latest_checkpoint(run))
    return {"run": run, "data": data, "ckpt": ckpt, "ema1": training_weights(ckpt, "ema1")}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def lively_jit(config):
    """A random JiT (``config`` is a JiTConfig) whose zero-initialised output layers get small random
    weights, so that its images depend on the weights, the labels and the noise. Seeded (0)."""
    import dataclasses

    from jit_diffusion.models.jit import JiT

    torch.manual_seed(0)
    model = JiT(**dataclasses.asdict(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("final_layer") or "adaLN" in name:
                p.normal_(0, 0.05)
    return model
