"""Checkpoints in and out: official ``.pth`` import, our export folder, and ``jit convert``.

Export folder (format ``jit-diffusion/1``), written atomically by :func:`save_pretrained` and read by
:func:`load_pretrained`, ``JiT.from_pretrained`` and ``checkpoint.load_model``:

- ``config.json``: ``format``, ``preset`` (or null), ``model_config`` (the :class:`JiTConfig` fields),
  ``num_params``, ``dtype``, ``weights`` (ema1/ema2/raw), ``flow`` {prediction, noise_scale, t_eps},
  ``sampling`` {cfg, cfg_interval}, ``class_names``, ``source``, ``step``.
- ``model.safetensors``: the network's state dict without the ``net.`` prefix, fp32 or bf16 (``pos_embed``,
  a fixed table, stays fp32), with a small string metadata block (format, preset, weights).

Official checkpoints (``checkpoint-*.pth`` of the authors' code) are read with ``weights_only=True`` and
only :class:`argparse.Namespace` allowed beyond tensors and plain values, so loading never runs pickled code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .checkpoint import (
    ModelInfo,
    _fsync_dir,
    _info_from_training,
    atomic_write_text,
    resolve_checkpoint,
    training_weights,
)
from .model import PRESETS, JiT, JiTConfig, preset_config

FORMAT = "jit-diffusion/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHT_CHOICES = ("ema1", "ema2", "raw")
OFFICIAL_KEYS = {"ema1": "model_ema1", "ema2": "model_ema2", "raw": "model"}
SAFE_GLOBALS = [argparse.Namespace]  # all that official checkpoints pickle beyond tensors and plain values
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_ARCH_KEYS = ("depth", "hidden_size", "num_heads", "bottleneck_dim", "in_context_len")
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(JiTConfig)}

Shapes = Mapping[str, tuple[int, ...]]


# --------------------------------------------------------------------------------------------
# Shapes, presets and config inference
# --------------------------------------------------------------------------------------------


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


def config_shapes(config: JiTConfig | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of a config, computed on the meta device (no memory, no init)."""
    fields = dataclasses.asdict(config) if isinstance(config, JiTConfig) else dict(config)
    with torch.device("meta"):
        model = JiT(**fields)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def find_preset(config: JiTConfig | Mapping[str, Any]) -> str | None:
    """The preset whose architecture equals ``config`` (image size, classes and dropout aside), or None."""
    cfg = dataclasses.asdict(config) if isinstance(config, JiTConfig) else dict(config)
    if cfg.get("in_channels", 3) != 3 or float(cfg.get("mlp_ratio", 4.0)) != 4.0:
        return None
    for name, preset in PRESETS.items():
        keys = (*_ARCH_KEYS, "patch_size", "in_context_start")
        if all(cfg.get(k) == preset[k] for k in keys):
            return name
    return None


def _mlp_ratio(mlp_hidden: int, hidden: int) -> float | None:
    for ratio in (4.0, round(mlp_hidden * 1.5 / hidden, 6), (mlp_hidden + 0.5) * 1.5 / hidden):
        if int(ratio * hidden * 2 / 3) == mlp_hidden:
            return ratio
    return None


def infer_config(
    shapes: Shapes,
    *,
    model_name: str | None = None,
    in_context_start: int | None = None,
    source: str | Path = "state dict",
    **extra: Any,
) -> tuple[JiTConfig, str | None]:
    """Reconstruct the :class:`JiTConfig` of a state dict (keys without ``net.``) and its preset name.

    ``model_name`` (e.g. ``args.model``) picks the architecture when it is a known preset; otherwise it is
    read off the shapes. The image size and class count always come from the shapes (``pos_embed`` and
    the label table). ``in_context_start`` is not visible in the weights: it comes from the argument,
    else the matching preset family; a non-preset architecture with in-context tokens needs the argument.
    ``extra`` sets other fields (e.g. dropout). The result is checked against every key and shape.
    """

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ValueError(f"{source}: cannot infer the JiT architecture: no {key!r} tensor (not a JiT state dict?)")
        return tuple(shapes[key])

    _, num_patches, hidden = need("pos_embed")
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"{source}: pos_embed has {num_patches} tokens, not a square grid")
    if "x_embedder.proj1.weight" in shapes:
        bottleneck, in_channels, patch, _ = need("x_embedder.proj1.weight")
    else:
        _, in_channels, patch, _ = need("x_embedder.proj.weight")
        bottleneck = None
    block_ids = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(block_ids) + 1 if block_ids else 0
    head_dim = need("blocks.0.attn.q_norm.weight")[0]
    mlp_hidden = need("blocks.0.mlp.w3.weight")[1]
    mlp_ratio = _mlp_ratio(mlp_hidden, hidden)
    if mlp_ratio is None:
        raise ValueError(f"{source}: no mlp_ratio gives a SwiGLU width of {mlp_hidden} at hidden size {hidden}")
    fields = dict(
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden, depth=depth,
        num_heads=hidden // head_dim, mlp_ratio=mlp_ratio, bottleneck_dim=bottleneck,
        num_classes=need("y_embedder.embedding_table.weight")[0] - 1,
        in_context_len=tuple(shapes["in_context_posemb"])[1] if "in_context_posemb" in shapes else 0,
    )  # fmt: skip
    sized = dict(input_size=fields["input_size"], num_classes=fields["num_classes"], **extra)
    if model_name in PRESETS:
        if in_context_start is not None:
            sized["in_context_start"] = in_context_start
        config = preset_config(model_name, **sized)
    else:
        family = [p for p in PRESETS.values() if all(p[k] == fields[k] for k in _ARCH_KEYS)]
        if in_context_start is None:
            if family and mlp_ratio == 4.0:
                in_context_start = family[0]["in_context_start"]
            elif fields["in_context_len"] == 0:
                in_context_start = 0
            else:
                raise ValueError(
                    f"{source}: depth {depth}, width {hidden} is no preset, and in_context_start is not stored in "
                    f"the weights; pass it (jit convert --in-context-start N)"
                )
        config = JiTConfig(**{**fields, **extra, "in_context_start": in_context_start})
        config.validate()
    check_state_dict(config_shapes(config), shapes, source)
    return config, find_preset(config)


# --------------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------------


def _unsafe_globals(path: Path, err: Exception) -> str | None:
    """Name the globals that made the safe unpickler refuse a file (static scan; nothing is run)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        if names:
            return ", ".join(names)
    except Exception:  # noqa: BLE001 - the scan is only for the message; fall back to the error text
        pass
    match = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    return match.group(1) if match else None


def _unpickler_reason(err: Exception) -> str:
    text = str(err).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    return " ".join(text.split()) or "unreadable pickle"


def read_torch_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint safely: tensors, plain values and ``argparse.Namespace`` only.

    Memory-maps zip-format files, so only the tensors that are used get read from disk.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        offending = _unsafe_globals(path, err)
        if offending is None:
            raise ValueError(f"cannot read {path} as a torch checkpoint: {_unpickler_reason(err)}") from None
        raise ValueError(
            f"refusing to load {path}: it pickles {offending}, which is not allowed "
            f"(only tensors, plain values and argparse.Namespace; nothing was executed)"
        ) from None
    except Exception as err:  # noqa: BLE001 - corrupt or foreign file: one line naming it
        raise ValueError(f"cannot read {path} as a torch checkpoint: {str(err).strip().splitlines()[0]}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return obj


def _is_official(ckpt: Mapping[str, Any]) -> bool:
    return any(isinstance(ckpt.get(k), Mapping) for k in OFFICIAL_KEYS.values()) and "model_config" not in ckpt


def _args_dict(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def _number(args: Mapping[str, Any], key: str, default: float) -> float:
    value = args.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def official_weights(ckpt: Mapping[str, Any], weights: str, source: str | Path) -> dict[str, torch.Tensor]:
    """The ``ema1``/``ema2``/``raw`` state dict of an official checkpoint, with ``net.`` stripped."""
    if weights not in OFFICIAL_KEYS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {list(WEIGHT_CHOICES)}")
    state = ckpt.get(OFFICIAL_KEYS[weights])
    if not isinstance(state, Mapping):
        present = [w for w, k in OFFICIAL_KEYS.items() if isinstance(ckpt.get(k), Mapping)]
        raise ValueError(f"{source} has no {OFFICIAL_KEYS[weights]!r} weights ({weights}); it has {present}")
    if any(k.startswith("net.") for k in state):  # the denoiser wraps the network as `net`
        return {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    return dict(state)


def load_official(
    path: str | Path,
    weights: str = "ema1",
    device: str | torch.device = "cpu",
    *,
    in_context_start: int | None = None,
) -> tuple[JiT, ModelInfo]:
    """Open an official ``checkpoint-*.pth``: ``weights`` is ``ema1`` (default), ``ema2`` or ``raw``.

    The preset comes from ``args.model`` when it names one, else from the tensor shapes. Returns the
    model in eval mode on ``device`` and its :class:`ModelInfo` (flow/sampling settings from ``args``).
    """
    path = Path(path)
    return _load_official(read_torch_file(path), path, weights, device, in_context_start)


def _load_official(ckpt: Mapping[str, Any], path: Path, weights: str, device, in_context_start: int | None):
    if not _is_official(ckpt):
        raise ValueError(f"{path} is not an official JiT checkpoint (expected keys {list(OFFICIAL_KEYS.values())})")
    state = official_weights(ckpt, weights, path)
    args = _args_dict(ckpt.get("args"))
    dropout = {"attn_drop": _number(args, "attn_dropout", 0.0), "proj_drop": _number(args, "proj_dropout", 0.0)}
    name = args.get("model") if isinstance(args.get("model"), str) else None
    config, _ = infer_config({k: tuple(v.shape) for k, v in state.items()}, model_name=name,
                             in_context_start=in_context_start, source=path, **dropout)  # fmt: skip
    model = _materialize(JiT, config, state, device, path)
    epoch = ckpt.get("epoch")
    info = ModelInfo(
        model_config=dataclasses.asdict(config),
        class_names=[str(i) for i in range(config.num_classes)],
        prediction="x",
        noise_scale=_number(args, "noise_scale", 2.0 if config.input_size >= 512 else 1.0),
        t_eps=_number(args, "t_eps", 0.05),
        cfg=_number(args, "cfg", 1.0),
        cfg_interval=(_number(args, "interval_min", 0.1), _number(args, "interval_max", 1.0)),
        source=f"{path} (epoch {epoch})" if isinstance(epoch, int) else str(path),
        weights=weights,
    )
    return model, info


def _materialize(cls: type[JiT], config: JiTConfig, state: Mapping[str, torch.Tensor], device, source) -> JiT:
    """Build on the meta device, check every key/shape, then allocate on ``device`` and load (strict)."""
    with torch.device("meta"):
        model = cls(**dataclasses.asdict(config))
    check_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()},
                     {k: tuple(v.shape) for k, v in state.items()}, source)  # fmt: skip
    model = model.to_empty(device=device)
    model.init_tables()  # RoPE buffers are not in the state dict
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Export folder
# --------------------------------------------------------------------------------------------


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use fp32 or bf16")
    return _DTYPES[dtype]


def _unwrap(model: torch.nn.Module) -> JiT:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model = getattr(model, "module", model)  # DDP wrapper
    if not isinstance(model, JiT):
        raise TypeError(f"expected a JiT model, got {type(model).__name__}")
    return model


def default_info(model: JiT) -> ModelInfo:
    """A :class:`ModelInfo` with default flow/sampling settings and class names "0", "1", ..."""
    config = dataclasses.asdict(model.config)
    return ModelInfo(model_config=config, class_names=[str(i) for i in range(config["num_classes"])])


def pretrained_config(model: JiT, info: ModelInfo, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` contents for ``model`` with ``info``."""
    config = dataclasses.asdict(model.config)
    return {
        "format": FORMAT,
        "preset": find_preset(config),
        "model_config": config,
        "num_params": model.num_params(),
        "dtype": str(dtype).removeprefix("torch."),
        "weights": info.weights,
        "flow": {"prediction": info.prediction, "noise_scale": info.noise_scale, "t_eps": info.t_eps},
        "sampling": {"cfg": info.cfg, "cfg_interval": list(info.cfg_interval)},
        "class_names": list(info.class_names),
        "source": info.source,
        "step": info.step,
    }


def write_pretrained_files(
    model: torch.nn.Module, folder: str | Path, info: ModelInfo | None = None, dtype: str | torch.dtype = "fp32"
) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing folder (each file atomically)."""
    model = _unwrap(model)
    dtype = _resolve_dtype(dtype)
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"export dtype must be fp32 or bf16, got {dtype}")
    info = info or getattr(model, "pretrained_info", None) or default_info(model)
    names = list(info.class_names) or [str(i) for i in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names given for a model with {model.num_classes} classes")
    info = dataclasses.replace(info, class_names=names)
    folder = Path(folder)
    config = pretrained_config(model, info, dtype)
    tensors = {
        k: v.detach().to("cpu", torch.float32 if k == "pos_embed" else dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {"format": "pt", "jit_diffusion": FORMAT, "preset": config["preset"] or "", "weights": info.weights}
    tmp = folder / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, folder / WEIGHTS_NAME)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


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
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass overwrite=True (jit convert --overwrite)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_pretrained_files(model, tmp, info, dtype)
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if old.exists():
                os.replace(old, folder)  # put the previous export back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(folder.parent)
    return folder


def read_pretrained_config(folder: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of an export folder; returns it with ``model_config`` complete."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected an export folder with {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    fmt = config.get("format")
    if not (isinstance(fmt, str) and fmt.startswith("jit-diffusion/")):
        raise ValueError(f"{path} is not a jit-diffusion export (format {fmt!r}, expected {FORMAT!r})")
    elif fmt != FORMAT:
        raise ValueError(f"{path} has format {fmt!r}, which this version cannot read (it reads {FORMAT!r})")
    model_config = config.get("model_config")
    if not isinstance(model_config, dict):
        raise ValueError(f"{path} has no 'model_config' object")
    unknown = sorted(set(model_config) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown model_config field(s) {unknown}; known: {sorted(_CONFIG_FIELDS)}")
    config["model_config"] = dataclasses.asdict(JiTConfig(**model_config))
    return config


def _info_from_config(config: dict[str, Any], source: str) -> ModelInfo:
    flow, sampling = config.get("flow") or {}, config.get("sampling") or {}
    num_classes = config["model_config"]["num_classes"]
    names = [str(n) for n in config.get("class_names") or []] or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{source}: {len(names)} class_names for a model with {num_classes} classes")
    return ModelInfo(
        model_config=config["model_config"],
        class_names=names,
        prediction=flow.get("prediction", "x"),
        noise_scale=float(flow.get("noise_scale", 1.0)),
        t_eps=float(flow.get("t_eps", 0.05)),
        cfg=float(sampling.get("cfg", 1.0)),
        cfg_interval=tuple(float(v) for v in sampling.get("cfg_interval", (0.1, 1.0))),
        source=source,
        weights=config.get("weights", "ema1"),
        step=config.get("step"),
    )


def load_pretrained(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    model_cls: type[JiT] = JiT,
) -> tuple[JiT, ModelInfo]:
    """Open an export folder: the model in eval mode on ``device`` (fp32 unless ``dtype``) and its ModelInfo."""
    folder = Path(folder)
    config = read_pretrained_config(folder)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} does not exist (expected the weights next to {CONFIG_NAME})")
    info = _info_from_config(config, str(folder))
    model_config = JiTConfig(**config["model_config"])
    model_config.validate()
    try:
        with safe_open(str(weights_path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        check_state_dict(config_shapes(model_config), shapes, weights_path)
        state = load_file(str(weights_path))
    except SafetensorError as err:
        raise ValueError(f"cannot read {weights_path}: {err}") from None
    model = _materialize(model_cls, model_config, state, torch.device(device), weights_path)
    target = _resolve_dtype(dtype)
    return (model.to(target) if target is not None else model), info


def pretrained_folder(
    model_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
    proxies: dict | None = None,
    resume_download: bool | None = None,
) -> Path:
    """A local export folder as is; a Hub repo id -> the snapshot folder holding its two files."""
    if os.path.isdir(model_id):
        return Path(model_id)
    from huggingface_hub import hf_hub_download

    paths = [hf_hub_download(repo_id=str(model_id), filename=name, revision=revision, cache_dir=cache_dir,
                             force_download=force_download, local_files_only=local_files_only, token=token)
             for name in (CONFIG_NAME, WEIGHTS_NAME)]  # fmt: skip
    return Path(paths[-1]).parent


# --------------------------------------------------------------------------------------------
# jit convert
# --------------------------------------------------------------------------------------------


def load_source(
    src: str | Path, weights: str | None = None, *, in_context_start: int | None = None
) -> tuple[JiT, ModelInfo]:
    """Open anything ``jit convert`` accepts (on CPU): an export folder, a run folder, a training
    checkpoint or an official ``.pth``. ``weights`` defaults to ema1 (an export folder has only its own)."""
    src = Path(src)
    if src.is_dir() and (src / CONFIG_NAME).is_file():
        model, info = load_pretrained(src)
        if weights not in (None, info.weights):
            raise ValueError(f"{src} holds only its {info.weights} weights; convert the original checkpoint instead")
        return model, info
    weights = weights or "ema1"
    path = resolve_checkpoint(src)
    ckpt = read_torch_file(path)
    if _is_official(ckpt):
        return _load_official(ckpt, path, weights, "cpu", in_context_start)
    if "model_config" not in ckpt or "model" not in ckpt:
        found = sorted(str(k) for k in ckpt)[:8]
        raise ValueError(
            f"{path} is neither an official JiT checkpoint nor a jit-diffusion training checkpoint (keys {found})"
        )
    fields = {k: v for k, v in ckpt["model_config"].items() if k in _CONFIG_FIELDS}
    config = JiTConfig(**fields)
    config.validate()
    model = _materialize(JiT, config, training_weights(ckpt, weights), "cpu", path)
    info = _info_from_training(ckpt, str(path), weights)
    return model, dataclasses.replace(info, model_config=dataclasses.asdict(config))


def convert(
    src: str | Path,
    out: str | Path,
    *,
    weights: str | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    in_context_start: int | None = None,
) -> tuple[Path, JiT, ModelInfo]:
    """Export ``src`` (see :func:`load_source`) as an export folder at ``out``."""
    model, info = load_source(src, weights, in_context_start=in_context_start)
    folder = save_pretrained(model, out, info, dtype=dtype, overwrite=overwrite)
    return folder, model, info


def run_convert(args: argparse.Namespace) -> None:
    from .errors import UserError

    try:
        folder, model, info = convert(args.src, args.out, weights=args.weights, dtype=args.dtype,
                                      overwrite=args.overwrite, in_context_start=args.in_context_start)  # fmt: skip
    except FileExistsError as err:
        raise UserError(str(err)) from None
    preset = find_preset(model.config) or "custom architecture"
    print(
        f"wrote {folder}: {preset}, {model.num_params() / 1e6:.2f}M params, {info.image_size}px, "
        f"{info.num_classes} classes, weights {info.weights} as {args.dtype}, from {args.src}"
    )


def add_cli(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="export an official .pth, a run folder or a training checkpoint as config.json + model.safetensors",
        description="Convert a checkpoint into an export folder (config.json + model.safetensors) that "
        "`jit sample`, `jit eval` and JiT.from_pretrained open.",
    )
    p.add_argument("src", help="official checkpoint .pth, run folder, training checkpoint .pt, or export folder")
    p.add_argument("out", help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default=None,
        help="which weights to export: ema1 (default, used for sampling), ema2 or raw",
    )
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="storage dtype (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="block index where in-context tokens join; needed only for non-preset official weights",
    )
    p.set_defaults(func=run_convert)
