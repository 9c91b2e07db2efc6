"""Image generation from a trained model: deterministic per-image noise, batching, uint8 images, for each
model family (``jit``: the ODE solvers of :func:`sampling.sample`; ``pmf``: :func:`pmf_sampling.sample_pmf`,
one evaluation per step); the ``jit sample`` command around it is :mod:`jit_diffusion.cli.sample`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.device import autocast_context, resolve_device
from ..core.images import make_grid, save_grid, save_npz, save_png_folder, to_uint8
from .pmf_sampling import check_class_scale as _check_scale_value
from .pmf_sampling import check_guidance_tokens, sample_pmf
from .sampling import METHODS, check_interval, image_noise, network_evaluations, sample, sampling_times

__all__ = ["DEFAULT_STEPS", "FAMILY_SAMPLERS", "SAMPLER_NAMES", "autocast_context", "check_cfg", "check_class_scale",
           "check_method", "evaluations", "generate", "image_noise", "interval_arg", "make_grid", "parse_classes",
           "parse_interval", "resolve_device", "save_grid", "save_npz", "save_png_folder", "to_uint8"]  # fmt: skip

PMF_METHOD = "pmf"


def _pmf_sample(model, noise, labels, *, method: str | None = PMF_METHOD, steps: int = 1, cfg: float = 1.0,
                cfg_interval: Sequence[float] = (0.0, 1.0), noise_scale: float = 1.0, class_scale: float = 1.0,
                **_solver_options):  # fmt: skip
    """:func:`sample_pmf` with :func:`sampling.sample`'s keywords: ``cfg`` is omega, ``cfg_interval`` in our
    time; the ODE solver's options (grid, shift, t_eps, prediction, final) do not apply."""
    check_method("pmf", method)
    return sample_pmf(model, labels, noise, steps, cfg, cfg_interval, noise_scale=noise_scale, class_scale=class_scale)


class FamilySampler(NamedTuple):
    """How a family samples: ``run(model, noise, labels, **sampler)`` and its network evaluations per image
    ``evaluations(method, steps, **grid)``; ``methods`` its sampler names, ``min_cfg`` the least guidance
    weight it takes (None: any)."""

    run: Callable[..., torch.Tensor]
    evaluations: Callable[..., int]
    methods: tuple[str, ...]
    min_cfg: float | None = None


def _ode_evaluations(method: str, steps: int, **grid) -> int:
    return network_evaluations(method, sampling_times(method, steps, **grid))


FAMILY_SAMPLERS = {
    "jit": FamilySampler(sample, _ode_evaluations, METHODS),
    "pmf": FamilySampler(_pmf_sample, lambda method, steps, **grid: int(steps), (PMF_METHOD,), 1.0),  # 1 per step
}


SAMPLER_NAMES = tuple(dict.fromkeys(m for s in FAMILY_SAMPLERS.values() for m in s.methods))  # solvers, pmf
DEFAULT_STEPS = 50  # a JiT model's ODE steps when neither a flag nor the model gives them


def _sampler(family: str) -> FamilySampler:
    if family not in FAMILY_SAMPLERS:
        raise ValueError(f"no sampler for model family {family!r}; known: {', '.join(FAMILY_SAMPLERS)}")
    return FAMILY_SAMPLERS[family]


def check_method(family: str, method: str | None) -> None:
    """A one-line ValueError when ``method`` is not a sampler of ``family`` (None: the model's default)."""
    methods = _sampler(family).methods
    if method is not None and method not in methods:
        if any(method in other.methods for other in FAMILY_SAMPLERS.values()):
            raise ValueError(f"--method {method} does not apply to a {family} model; its sampler(s): "
                             f"{', '.join(methods)} (or leave --method out)")  # fmt: skip
        raise ValueError(f"--method: unknown sampler {method!r}; choose from {', '.join(methods)}")


def check_cfg(family: str, cfg: float, model_config: Mapping | None = None) -> None:
    """A one-line ValueError when ``family``'s sampler cannot take the guidance weight ``cfg`` (pMF: omega >= 1;
    omega 1 alone for a network, given by its ``model_config``, without guidance tokens)."""
    least = _sampler(family).min_cfg
    if least is not None and cfg < least:
        raise ValueError(f"--cfg {cfg:g}: a {family} model takes guidance weights >= {least:g}")
    if family == "pmf":
        check_guidance_tokens(cfg, model_config or {})


def check_class_scale(family: str, scale: float) -> None:
    """A one-line ValueError when ``--class-scale`` is not 1 for a family without it (pMF alone has it) or is
    not a number >= 0."""
    if scale != 1.0 and family != "pmf":
        raise ValueError(f"--class-scale {scale:g}: a {family} model has no class scale (a pMF sampling option; "
                         "JiT models have --cfg)")  # fmt: skip
    _check_scale_value(scale)


def evaluations(family: str, method: str, steps: int, **grid) -> int:
    """Network evaluations per image of ``family``'s sampler ``method`` with ``steps`` steps (``grid``: the
    ODE solvers' grid keywords of :func:`sampling.sampling_times`, unused by pMF)."""
    return _sampler(family).evaluations(method, steps, **grid)


@torch.no_grad()
def generate(
    model,
    labels: Sequence[int] | torch.Tensor,
    *,
    image_size: int,
    seed: int = 0,
    start_index: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    progress: bool = False,
    family: str = "jit",
    **sampler,
) -> np.ndarray:
    """Sample one image per label; image k uses the noise of index ``start_index + k``. ``sampler`` are
    :func:`sampling.sample`'s keywords (``method``, ``steps``, ``cfg``, ``cfg_interval``, ``noise_scale``,
    ``t_eps``, ``prediction``, ``grid``, ``shift``, ``final``); ``family`` picks the sampler (``pmf``: cfg is
    omega, cfg_interval in our time, ``steps`` evaluations, the ODE options unused).

    ``class_scale`` (pMF only, see :func:`sample_pmf`) is checked here, before any work.

    Returns uint8 (N, H, W, 3).
    """
    check_class_scale(family, sampler.get("class_scale", 1.0))
    if sampler.get("class_scale") == 1.0:
        del sampler["class_scale"]  # 1 is every family's plain sampler
    run = _sampler(family).run
    device = resolve_device(device)
    labels = torch.as_tensor(labels, dtype=torch.long)
    # a compiled network has static shapes: a short last batch (or a short chunk after full ones) is padded
    # to the full batch, which costs at most one batch of extra rows instead of a compile (~30 s for B/16)
    pad = _is_compiled(model) and (len(labels) > batch_size or start_index > 0)
    chunks = []
    batches = range(0, len(labels), batch_size)
    for lo in tqdm(batches, disable=not progress, desc="sampling", unit="batch"):
        y = labels[lo : lo + batch_size].to(device)
        idx = range(start_index + lo, start_index + lo + len(y))
        noise = image_noise(idx, (model.in_channels, image_size, image_size), seed).to(device)
        with autocast_context(device, precision):
            out = run(model, *_padded(noise, y, batch_size if pad else len(y)), **sampler)[: len(y)]
        chunks.append(to_uint8(out))
    if not chunks:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.concatenate(chunks)


def _is_compiled(model) -> bool:
    """Whether ``model`` runs through ``torch.compile`` (``Module.compile`` in place)."""
    return getattr(model, "_compiled_call_impl", None) is not None


def _padded(noise: torch.Tensor, y: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``noise`` and ``y`` with their last row repeated up to ``rows`` rows (the extra outputs are dropped)."""
    extra = rows - len(y)
    if extra <= 0:
        return noise, y
    return torch.cat([noise, noise[-1:].expand(extra, *noise.shape[1:])]), torch.cat([y, y[-1:].expand(extra)])


def compile_for_sampling(model, device: torch.device, enabled: bool = True):
    """``torch.compile`` the whole forward on CUDA (``jit sample``/``jit eval`` unless ``--no-compile``); each
    batch shape (with and without the CFG rows) compiles once, and :func:`generate` pads short batches to the
    full one. Idempotent; returns ``model``."""
    if enabled and torch.device(device).type == "cuda" and not _is_compiled(model):
        if hasattr(model, "compile_model"):
            model.compile_model("model")
        else:
            model.compile()  # a network without its own compile options (pMF): the whole forward
    return model


def _class_by_name(item: str, class_names: Sequence[str], num_classes: int) -> int:
    """The class named ``item``, else the one whose name lists it among its comma-separated synonyms
    (ImageNet style: "tabby, tabby cat"), ignoring case; an error when none or several classes do."""
    wanted = item.casefold()
    hits = [i for i, name in enumerate(class_names) if name == item] or [
        i for i, name in enumerate(class_names) if wanted in {s.strip().casefold() for s in name.split(",")}]
    if len(hits) > 1:
        raise ValueError(f"--classes: {item!r} names classes {hits}; give the index instead")
    if not hits:
        shown = ", ".join(repr(n) for n in list(class_names)[:8]) + (", ..." if len(class_names) > 8 else "")
        raise ValueError(f"--classes: unknown class {item!r}; use indices 0..{num_classes - 1} or names ({shown})")
    return hits[0]


def _whole_name(items: list[str], class_names: Sequence[str]) -> tuple[int, int] | None:
    """(class, items used) of the longest run of 2+ ``items`` that together spell a class name containing
    commas ("tabby, tabby cat"), ignoring case and the spaces around commas; None when none does."""
    spelled = {}
    for i, name in enumerate(class_names):
        spelled.setdefault(_normalized(name.split(",")), []).append(i)
    longest = max((name.count(",") + 1 for name in class_names), default=1)
    for used in range(min(longest, len(items)), 1, -1):
        hits = spelled.get(_normalized(items[:used]), [])
        if len(hits) > 1:
            raise ValueError(f"--classes: {', '.join(items[:used])!r} names classes {hits}; give the index instead")
        if hits:
            return hits[0], used
    return None


def _normalized(parts: Sequence[str]) -> str:
    return ", ".join(p.strip() for p in parts).casefold()


def parse_classes(spec: str | None, class_names: Sequence[str], num_classes: int) -> list[int]:
    """``None``/``all`` -> every class; otherwise a comma list of indices, class names, or one of the
    comma-separated synonyms of a class name (``golden retriever`` for "golden retriever", ``tabby`` for
    "tabby, tabby cat"). A whole name wins over its parts: ``tabby, tabby cat`` is that one class."""
    if num_classes == 0:
        return [0]
    if spec in (None, "", "all"):
        return list(range(num_classes))
    items = [item.strip() for item in spec.split(",")]
    out = []
    while items:
        item = items[0]
        whole = None if item.lstrip("-").isdigit() else _whole_name(items, class_names)
        if whole is not None:
            k, used = whole
        else:
            k = int(item) if item.lstrip("-").isdigit() else _class_by_name(item, class_names, num_classes)
            used = 1
        if not 0 <= k < num_classes:
            raise ValueError(f"--classes: class index {k} is out of range 0..{num_classes - 1}")
        out.append(k)
        items = items[used:]
    return out


def parse_interval(text: str, flag: str = "--interval") -> tuple[float, float]:
    """``"0.1,1.0"`` -> (0.1, 1.0); a one-line ValueError naming ``flag`` unless 0 <= min <= max <= 1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = None
    if values is None or len(values) != 2:
        raise ValueError(f"{flag} expects two comma-separated numbers like 0.1,1.0, got {text!r}")
    return check_interval(values, flag)


def interval_arg(flag: str = "--interval") -> Callable[[str], tuple[float, float]]:
    """The argparse ``type`` of a CFG interval flag: :func:`parse_interval`, whose message argparse prints
    (after "argument FLAG:") instead of its generic "invalid value"."""

    def parse(text: str) -> tuple[float, float]:
        try:
            return parse_interval(text, flag)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{flag} ")) from None

    parse.__name__ = "interval"
    return parse
