"""The pMF objective's optional perceptual terms, from LOCAL weight files only (nothing is downloaded).

Each term maps (x_hat, x) -> a per-image distance (B,), images in [-1, 1]; the objective compares the
network's one-step image x_hat = z - t u with the clean image where t < ``--perceptual-max-t`` (pMF time)
and weights each term adaptively (:mod:`..diffusion.meanflow`). The feature networks are frozen (no
parameter takes a gradient, eval mode) and live outside the trained model: the checkpoints never hold them.

- :class:`LPIPS` (``--lpips-weights``, weight 0.4): torchvision's VGG16 convolutional trunk and the five
  1x1 calibration maps of LPIPS v0.1: input (x - shift) / scale, features at relu1_2, relu2_2, relu3_3,
  relu4_3 and relu5_3, each unit-normalised over channels, squared differences weighted by the
  calibration map, averaged over positions and summed over the five layers. The files: torchvision's
  ``vgg16`` state dict (``features.*``; ``classifier.*`` is ignored) and the LPIPS ``vgg.pth``
  (``lin0.model.1.weight`` ...), or one file holding both (the ``lpips`` package's ``net.sliceK.*`` names
  work too); comma-separated paths are merged.
- :class:`ConvNeXtDistance` (``--convnext-weights``, weight 0.1): a torchvision ConvNeXt (tiny, small,
  base or large, told apart by the file's shapes) in eval mode; inputs resized to 224 px and normalised
  with the ImageNet statistics; the distance is the mean squared difference of the classifier's logits.
  The public code that trained pMF has not published this term; this form is ours.

Files load without executing pickles: ``.safetensors`` through safetensors, anything else through the
project's one safe ``torch.load``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from ..core.fileio import safe_torch_load

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16().features
LPIPS_WIDTHS = (64, 128, 256, 512, 512)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONVNEXT_VARIANTS = {(96, 9): "tiny", (96, 27): "small", (128, 27): "base", (192, 27): "large"}  # (width, depth 3)


def read_weights(paths: str, flag: str) -> dict[str, torch.Tensor]:
    """The merged tensors of comma-separated local files; a one-line UserError naming ``flag`` otherwise."""
    state: dict[str, torch.Tensor] = {}
    for path in (Path(p.strip()) for p in paths.split(",") if p.strip()):
        if not path.is_file():
            raise UserError(f"{flag} {path}: no such file (perceptual weights are read from local files only)")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                loaded = load_file(str(path))
            else:
                loaded = safe_torch_load(path)
        except Exception as err:  # noqa: BLE001 - a corrupt or foreign file: one line naming the flag
            raise UserError(f"{flag} {path}: {str(err).strip().splitlines()[0]}") from None
        state.update({k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)})
    if not state:
        raise UserError(f"{flag}: no tensors in {paths!r}")
    return state


def _load_exactly(module: nn.Module, state: dict[str, torch.Tensor], flag: str, what: str) -> None:
    """Load every tensor ``module`` has from ``state`` (extra keys ignored); one line naming the first gap."""
    own = module.state_dict()
    for key, value in own.items():
        if key not in state:
            raise UserError(f"{flag}: the file has no {key} (expected {what})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(f"{flag}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)} "
                            f"({what})")  # fmt: skip
    module.load_state_dict({k: state[k].to(torch.float32) for k in own}, strict=True)


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class LPIPS(nn.Module):
    """LPIPS v0.1 (VGG16): per-image distance (B,) of images in [-1, 1]; zero for identical images."""

    def __init__(self, state: dict[str, torch.Tensor], flag: str = "--lpips-weights"):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"])[: LPIPS_TAPS[-1] + 1]  # the convolutional trunk to relu5_3
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_WIDTHS)
        renamed = {}
        for key, value in state.items():
            key = re.sub(r"^net\.slice\d\.", "features.", key)  # the lpips package's full model
            key = re.sub(r"^lin(\d)\.model\.1\.", r"lin.\1.", key)  # its calibration layers
            renamed[re.sub(r"^lin(\d)\.weight$", r"lin.\1.weight", key)] = value
        _load_exactly(self, renamed, flag, "torchvision vgg16 features.* and LPIPS lin0..lin4 weights")
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised feature maps of images ``x`` in [-1, 1]."""
        h, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in LPIPS_TAPS:
                out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))  # f / |f| over channels
        return out

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.taps(x)
        return sum(lin((a - b).square()).mean(dim=(1, 2, 3)) for lin, a, b in zip(self.lin, self.taps(x_hat), target))


class ConvNeXtDistance(nn.Module):
    """Mean squared difference of a torchvision ConvNeXt's logits: per-image (B,), images in [-1, 1]."""

    def __init__(self, state: dict[str, torch.Tensor], flag: str = "--convnext-weights", size: int | None = 224):
        super().__init__()
        import torchvision.models as tvm

        stem = state.get("features.0.0.weight")
        depth = len({k.split(".")[2] for k in state if k.startswith("features.5.")})
        variant = CONVNEXT_VARIANTS.get((None if stem is None else int(stem.shape[0]), depth))
        if variant is None:
            raise UserError(f"{flag}: not a torchvision ConvNeXt state dict (tiny, small, base or large: "
                            f"features.0.0.weight and features.5.* tell them apart)")  # fmt: skip
        classes = state.get("classifier.2.weight")
        self.net = getattr(tvm, f"convnext_{variant}")(num_classes=1000 if classes is None else classes.shape[0])
        _load_exactly(self.net, state, flag, f"a torchvision convnext_{variant} state dict")
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(((x + 1) / 2 - self.mean) / self.std)  # (B, classes)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.logits(x)
        return (self.logits(x_hat) - target).square().mean(dim=1)


def perceptual_terms(lpips: str | None, lpips_weight: float, convnext: str | None, convnext_weight: float,
                     device: torch.device) -> list[tuple[float, nn.Module]]:  # fmt: skip
    """The (weight, term) pairs of the flags given (none: no term), frozen, on ``device``."""
    terms = []
    if lpips:
        terms.append((lpips_weight, LPIPS(read_weights(lpips, "--lpips-weights")).to(device)))
    if convnext:
        terms.append((convnext_weight, ConvNeXtDistance(read_weights(convnext, "--convnext-weights")).to(device)))
    return terms
