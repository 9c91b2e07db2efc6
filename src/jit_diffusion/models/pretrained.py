"""The export format: a folder with ``config.json`` and ``model.safetensors`` (format ``jit-diffusion/1``),
and the Hugging Face Hub mixin that gives :class:`~jit_diffusion.models.jit.JiT` ``save_pretrained`` /
``from_pretrained`` on that format.

- ``config.json``: ``format``, ``preset`` (or null), ``model_config`` (the :class:`JiTConfig` fields),
  ``num_params``, ``dtype``, ``weights`` (ema1/ema2/raw), ``flow`` {prediction, noise_scale, t_eps},
  ``sampling`` {cfg, cfg_interval, method}, ``class_names``, ``source``, ``step``.
- ``model.safetensors``: the network's state dict without the ``net.`` prefix, fp32 or bf16 (``pos_embed``,
  a fixed table, stays fp32), with a small string metadata block (format, preset, weights).

Functions that build a model take the model class as an argument, so this module sits below ``model``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..core.fileio import atomic_folder, atomic_write_path, read_json_object, save_json
from .config import JiTConfig, ModelInfo, find_preset

FORMAT = "jit-diffusion/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

Shapes = Mapping[str, tuple[int, ...]]


def _short(items: list[str], limit: int = 6) -> str:
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + more + "]"


def check_state_dict(expected: Shapes, found: Shapes, source: str | Path) -> None:
    """Raise a one-line ValueError naming missing, unexpected and wrong-shape keys (both shapes)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k}: file {tuple(found[k])} vs config {tuple(expected[k])}"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]  # fmt: skip
    if missing or unexpected or wrong:
        parts = [f"{name} {_short(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]  # fmt: skip
        raise ValueError(f"{source}: weights do not match the model config: {'; '.join(parts)}")


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict."""
    return {k: tuple(v.shape) for k, v in state.items()}


def config_shapes(model_cls: type, config: JiTConfig) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of ``model_cls(**config)``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = model_cls(**dataclasses.asdict(config))
    return shapes_of(model.state_dict())


def build_model(
    model_cls: type, config: JiTConfig, state: Mapping[str, torch.Tensor], device, source, *, check: bool = True
) -> Any:
    """Build on the meta device, check every key and shape (``check=False``: the caller already did), then
    allocate on ``device`` and load (strict).

    Returns the model in eval mode; the fixed tables (RoPE, not in the state dict) are recomputed."""
    with torch.device("meta"):
        model = model_cls(**dataclasses.asdict(config))
    if check:
        check_state_dict(shapes_of(model.state_dict()), shapes_of(state), source)
    model = model.to_empty(device=device)
    model.init_tables()
    model.load_state_dict(state, strict=True)
    return model.eval()


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``fp32``/``bf16`` (or a torch dtype, or None) -> torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use fp32 or bf16")
    return _DTYPES[dtype]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside torch.compile / DDP wrappers; a TypeError for anything without a JiTConfig."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model = getattr(model, "module", model)  # DDP wrapper
    if not isinstance(getattr(model, "config", None), JiTConfig):
        raise TypeError(f"expected a JiT model, got {type(model).__name__}")
    return model


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def export_info(model: torch.nn.Module, info: ModelInfo | None = None) -> ModelInfo:
    """The settings an export writes: ``info``, else the model's ``pretrained_info``, else the defaults, with
    one class name per class (``0``, ``1``, ... when it has none)."""
    info = info or getattr(model, "pretrained_info", None) or ModelInfo.create(model.config)
    names = list(info.class_names) or [str(i) for i in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names given for a model with {model.num_classes} classes")
    return dataclasses.replace(info, class_names=names)


def export_tensors(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict on the CPU in ``dtype``; ``pos_embed``, a fixed table, stays fp32."""
    return {k: v.detach().to("cpu", torch.float32 if k == "pos_embed" else dtype).contiguous()
            for k, v in model.state_dict().items()}  # fmt: skip


def settings_blocks(info: ModelInfo) -> dict[str, dict[str, Any]]:
    """The ``flow`` and ``sampling`` blocks an export records (read back by :func:`recorded_settings`)."""
    return {
        "flow": {"prediction": info.prediction, "noise_scale": info.noise_scale, "t_eps": info.t_eps},
        "sampling": {"cfg": info.cfg, "cfg_interval": list(info.cfg_interval), "method": info.method},
    }


def recorded_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`ModelInfo` settings in the ``flow`` and ``sampling`` blocks of ``config`` (None where absent)."""
    flow, sampling = config.get("flow") or {}, config.get("sampling") or {}
    return dict(prediction=flow.get("prediction"), noise_scale=flow.get("noise_scale"), t_eps=flow.get("t_eps"),
                cfg=sampling.get("cfg"), cfg_interval=sampling.get("cfg_interval"), method=sampling.get("method"))


def export_config(model: torch.nn.Module, info: ModelInfo, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` contents for ``model`` with ``info``."""
    config = dataclasses.asdict(model.config)
    return {
        "format": FORMAT,
        "preset": find_preset(config),
        "model_config": config,
        "num_params": model.num_params(),
        "dtype": str(dtype).removeprefix("torch."),
        "weights": info.weights,
        **settings_blocks(info),
        "class_names": list(info.class_names),
        "source": info.source,
        "step": info.step,
    }


def write_pretrained_files(
    model: torch.nn.Module, folder: str | Path, info: ModelInfo | None = None, dtype: str | torch.dtype = "fp32"
) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing folder (each file atomically)."""
    model = unwrap(model)
    dtype = resolve_dtype(dtype)
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"export dtype must be fp32 or bf16, got {dtype}")
    info = export_info(model, info)
    folder = Path(folder)
    config = export_config(model, info, dtype)
    tensors = export_tensors(model, dtype)
    metadata = {"format": "pt", "jit_diffusion": FORMAT, "preset": config["preset"] or "", "weights": info.weights}
    atomic_write_path(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    save_json(folder / CONFIG_NAME, config)


def save_pretrained(
    model: torch.nn.Module,
    folder: str | Path,
    info: ModelInfo | None = None,
    *,
    dtype: str | torch.dtype = "fp32",
    overwrite: bool = False,
) -> Path:
    """Export ``model`` (+ ``info``) as a folder, atomically: written to a temp folder, then renamed.

    Refuses an existing non-empty ``folder`` unless ``overwrite``. Returns the folder.
    """
    folder = Path(folder)
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        write_pretrained_files(model, tmp, info, dtype)
    return folder


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``model.safetensors`` beside ``config.json``."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def read_export(folder: str | Path) -> tuple[dict[str, Any], JiTConfig]:
    """Read and check ``config.json`` of an export folder: the contents (``model_config`` complete) and the
    :class:`JiTConfig` they describe."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected an export folder with {CONFIG_NAME})")
    config = read_json_object(path)
    fmt = config.get("format")
    if not (isinstance(fmt, str) and fmt.startswith("jit-diffusion/")):
        raise ValueError(f"{path} is not a jit-diffusion export (format {fmt!r}, expected {FORMAT!r})")
    if fmt != FORMAT:
        raise ValueError(f"{path} has format {fmt!r}, which this version cannot read (it reads {FORMAT!r})")
    model_config = config.get("model_config")
    if not isinstance(model_config, dict):
        raise ValueError(f"{path} has no 'model_config' object")
    parsed = JiTConfig.from_dict(model_config, source=str(path))
    config["model_config"] = dataclasses.asdict(parsed)
    return config, parsed


def read_pretrained_config(folder: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of an export folder; returns it with ``model_config`` complete."""
    return read_export(folder)[0]


def read_export_weights(folder: str | Path, model_cls: type, model_config: JiTConfig) -> dict[str, torch.Tensor]:
    """The tensors of an export folder's ``model.safetensors``; every key and shape is checked against
    ``model_config`` from the file header before a tensor is read."""
    weights_path = Path(folder) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} does not exist (expected the weights next to {CONFIG_NAME})")
    try:
        with safe_open(str(weights_path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        check_state_dict(config_shapes(model_cls, model_config), shapes, weights_path)
        return load_file(str(weights_path))
    except SafetensorError as err:
        raise ValueError(f"cannot read {weights_path}: {err}") from None


def info_from_export(config: Mapping[str, Any], source: str) -> ModelInfo:
    """The :class:`ModelInfo` recorded in an export's ``config.json``."""
    return ModelInfo.create(config["model_config"], config.get("class_names"), **recorded_settings(config),
                            source=source, weights=config.get("weights"), step=config.get("step"))  # fmt: skip


def load_pretrained(
    folder: str | Path,
    model_cls: type,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[Any, ModelInfo]:
    """Open an export folder: a ``model_cls`` in eval mode on ``device`` (fp32 unless ``dtype``) and its info."""
    config, model_config = read_export(folder)
    info = info_from_export(config, str(Path(folder)))
    state = read_export_weights(folder, model_cls, model_config)
    model = build_model(model_cls, model_config, state, torch.device(device), folder, check=False)
    target = resolve_dtype(dtype)
    return (model.to(target) if target is not None else model), info


def pretrained_folder(
    model_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A local export folder as is; a Hub repo id -> the snapshot folder holding its two files."""
    if os.path.isdir(model_id):
        return Path(model_id)
    from huggingface_hub import hf_hub_download

    paths = [hf_hub_download(repo_id=str(model_id), filename=name, revision=revision, cache_dir=cache_dir,
                             force_download=force_download, local_files_only=local_files_only, token=token)
             for name in (CONFIG_NAME, WEIGHTS_NAME)]  # fmt: skip
    return Path(paths[-1]).parent


# Opener for local paths other than export folders (run folders, checkpoints, official .pth files).
# :mod:`jit_diffusion.loading` registers itself here, so this module needs nothing above it.
_LOCAL_OPENER: Callable[..., tuple[Any, ModelInfo]] | None = None


def register_local_opener(opener: Callable[..., tuple[Any, ModelInfo]]) -> None:
    """Set the function ``opener(path, weights, device) -> (model, info)`` used for local paths."""
    global _LOCAL_OPENER
    _LOCAL_OPENER = opener


class HubMixin(PyTorchModelHubMixin):
    """``save_pretrained`` / ``from_pretrained`` in the export format; ``from_pretrained`` also opens
    every local source ``jit sample`` opens (run folder, ``checkpoints/latest``, a step ``.pt``, an
    official ``.pth``), with ``weights="ema1"|"ema2"|"raw"``.

    A loaded model keeps its :class:`ModelInfo` as ``model.pretrained_info``, and saving it again
    writes the same settings."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, weights: str | None = None,
                        map_location: str | torch.device = "cpu", **kwargs):  # fmt: skip
        """Load a local source (any kind) or a Hub repo id (export format)."""
        path = Path(str(pretrained_model_name_or_path)).expanduser()
        if not path.exists():
            return super().from_pretrained(pretrained_model_name_or_path, map_location=map_location, **kwargs)
        if _LOCAL_OPENER is None:
            raise RuntimeError("import jit_diffusion (or jit_diffusion.formats.loading) before loading local sources")
        model, info = _LOCAL_OPENER(path, weights, map_location)
        if kwargs.get("dtype") is not None:
            model = model.to(resolve_dtype(kwargs["dtype"]))
        model.pretrained_info = info
        return model

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (called by ``save_pretrained``)."""
        write_pretrained_files(self, save_directory, getattr(self, "pretrained_info", None))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", dtype: torch.dtype | None = None,
                         revision: str | None = None, cache_dir: str | Path | None = None,
                         force_download: bool = False, local_files_only: bool = False,
                         token: str | bool | None = None, **_config_fields):  # fmt: skip
        """Load a Hub repo in the export format (called by the Hub mixin's ``from_pretrained``).

        ``_config_fields`` are values the mixin copies from ``config.json``; the weights define them."""
        folder = pretrained_folder(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                   local_files_only=local_files_only, token=token)  # fmt: skip
        model, info = load_pretrained(folder, cls, device=map_location, dtype=dtype)
        model.pretrained_info = info
        return model
