"""Fine-tuning a pMF model from a pMF source (``jit train --init-from``): what differs from JiT's (:mod:`.init`).

- The architecture check compares the resolved pMF fields (bottleneck and SwiGLU widths, prefix token counts).
- pMF's position embedding is LEARNED over prefix + patch tokens, so another image size cannot recompute
  it: the prefix rows are kept and the patch rows, seen as a grid, are resized bicubically to the new grid
  (as ViT fine-tuning at another resolution does); the RoPE tables are rebuilt by the new model.
- A source without the v head (a released inference checkpoint) gets it from its u head: at h = 0 the
  average velocity u is the instantaneous velocity v, so the copy starts the v head at the right function.
  A run without a v head (``--jvp-tangent sample`` or ``u-head``) leaves the source's out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.errors import UserError
from ..models.pmf_config import PMFConfig

# resolved pMF fields that must equal the source's (image size, classes and the v head may change)
PMF_ARCH_FIELDS = ("patch_size", "in_channels", "hidden_size", "depth", "num_heads", "aux_head_depth", "bottleneck",
                   "mlp_hidden", "num_class_tokens", "num_cfg_tokens", "num_interval_tokens", "num_time_tokens")
V_HEAD = {"u_heads.": "v_heads.", "u_final_layer.": "v_final_layer."}  # u head prefix -> v head prefix


def check_pmf_architecture(source: dict, new: dict, where: str) -> None:
    """A one-line UserError naming both values when the new run's pMF architecture differs from the source's."""
    old_cfg, new_cfg = PMFConfig(**source), PMFConfig(**new)
    for key in PMF_ARCH_FIELDS:
        old, now = getattr(old_cfg, key), getattr(new_cfg, key)
        if old != now:
            raise UserError(f"--init-from {where}: the source has {key} {old}, the new run {now}; only the image "
                            f"size (same patch size) and the classes can change")  # fmt: skip


def resize_pos_embed(table: torch.Tensor, num_prefix: int, grid: int) -> torch.Tensor:
    """(1, P + g^2, H) -> (1, P + grid^2, H): prefix rows kept, the g x g patch rows resized bicubically."""
    prefix, patches = table[:, :num_prefix], table[:, num_prefix:]
    old = round(patches.shape[1] ** 0.5)
    if old * old != patches.shape[1]:
        raise UserError(f"--init-from: the source's position embedding has {patches.shape[1]} patch rows, not a square")
    if old == grid:
        return table.clone()
    image = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()  # (1, H, g, g)
    resized = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([prefix, resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)], dim=1)


def fit_v_head(state: dict[str, torch.Tensor], wanted: bool) -> bool:
    """Make ``state`` (in place) match a network with (``wanted``) or without a v head: a missing one is
    copied from the u head (see :func:`with_v_head`), an unwanted one dropped; whether one was copied."""
    if wanted:
        return with_v_head(state)
    for key in [k for k in state if k.startswith(tuple(V_HEAD.values()))]:
        del state[key]
    return False


def with_v_head(state: dict[str, torch.Tensor]) -> bool:
    """Give ``state`` (in place) a v head copied from its u head when it has none; whether it did."""
    if any(k.startswith(tuple(V_HEAD.values())) for k in state):
        return False
    for key in [k for k in state if k.startswith(tuple(V_HEAD))]:
        prefix = next(p for p in V_HEAD if key.startswith(p))
        state[V_HEAD[prefix] + key[len(prefix):]] = state[key].clone()
    return True
