import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

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
