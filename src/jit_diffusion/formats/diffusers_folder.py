"""Diffusers-style JiT folders, read and written: what the Hub holds (e.g. ``BiliSakura/JiT-diffusers``).

Read (:func:`open_diffusers`): a pipeline folder (``model_index.json``, ``transformer/``, ``scheduler/``,
optional ``labels/``), its ``transformer/`` folder, a ``diffusion_pytorch_model.safetensors`` beside its
``config.json``, or shards listed in ``diffusion_pytorch_model.safetensors.index.json``. The layout
(A, B0, B; see :mod:`.diffusers`) comes from the tensor names, fp32/fp16/bf16 files load as fp32, and the
scheduler's ``t_eps``/``solver`` and any guidance hints become the :class:`ModelInfo` defaults. Only
safetensors are read: pickled weights (``.bin``) are refused without being opened.

Written (:func:`save_diffusers`, ``jit convert --format diffusers-b0|diffusers-b``): a pipeline folder

    model_index.json                        pipeline and component classes, id2label when classes have names
    scheduler/scheduler_config.json         JiTScheduler: num_train_timesteps, t_eps, solver
    transformer/config.json                 JiTTransformer2DModel: every architecture field
    transformer/diffusion_pytorch_model.safetensors
    jit_diffusion.json                      our sampling settings (guidance, interval, noise scale, origin)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.fileio import atomic_folder, atomic_write_path, read_json_object, save_json
from ..diffusion.solvers import METHODS
from ..models.config import JiTConfig, ModelInfo
from ..models.jit import JiT
from ..models.pretrained import (
    FORMAT,
    build_model,
    check_state_dict,
    config_shapes,
    export_info,
    export_tensors,
    recorded_settings,
    resolve_dtype,
    settings_blocks,
    unwrap,
)
from .diffusers import a_prefix, detect_layout, diffusers_config, from_official, jit_config, layout_shapes, to_official

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
PIPELINE_INDEX = "model_index.json"
SETTINGS_FILE = "jit_diffusion.json"
LABEL_FILES = ("labels/id2label_en.json", "labels/id2label.json")
DIFFUSERS_VERSION = "0.31.0"
_STORED = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}  # safetensors tag -> our name
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _optional_json(path: Path | None) -> dict[str, Any]:
    return read_json_object(path) if path is not None and path.is_file() else {}


def _shard_files(index_path: Path) -> tuple[list[Path], set[str]]:
    weight_map = read_json_object(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no 'weight_map' object naming the shard of each tensor")
    files = []
    for name in sorted(set(map(str, weight_map.values()))):
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise ValueError(f"{index_path}: shard {name!r} is not a .safetensors file in the same folder")
        if not (index_path.parent / name).is_file():
            raise FileNotFoundError(f"{index_path} lists shard {name}, which does not exist")
        files.append(index_path.parent / name)
    return files, set(weight_map)


def _weight_files(folder: Path) -> tuple[list[Path], set[str] | None]:
    """The safetensors files of a transformer folder (and the keys an index promises), pickles refused."""
    if (folder / INDEX_FILE).is_file():
        return _shard_files(folder / INDEX_FILE)
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE], None
    variants = sorted(folder.glob("diffusion_pytorch_model.*safetensors"))
    if len(variants) == 1:
        return variants, None
    pickled = sorted(p.name for p in folder.glob("diffusion_pytorch_model*") if p.suffix in _PICKLES)
    if pickled:
        raise ValueError(f"{folder} holds pickled weights ({pickled[0]}): only safetensors are read and "
                         f"nothing was loaded; ask for a {WEIGHTS_FILE}")  # fmt: skip
    if variants:
        raise ValueError(f"{folder} holds several weight files {[p.name for p in variants]}; pass one of them")
    raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE} (or {INDEX_FILE})")


def _locate(path: Path) -> tuple[Path | None, Path, Path | None] | None:
    """(pipeline root or None, transformer folder, weights file given) for a diffusers source, else None."""
    if path.is_file():
        if not path.name.endswith((".safetensors", INDEX_FILE)) or not (path.parent / "config.json").is_file():
            return None
        folder, given = path.parent, path
    elif path.is_dir() and (path / PIPELINE_INDEX).is_file():
        return path, path / "transformer", None
    elif path.is_dir() and (path / "config.json").is_file() and any(path.glob("diffusion_pytorch_model*")):
        folder, given = path, None
    else:
        return None
    parent_index = folder.parent / PIPELINE_INDEX
    root = folder.parent if folder.name == "transformer" and parent_index.is_file() else None
    return root, folder, given


def _headers(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Key -> shape and the storage dtypes of safetensors files, read from their headers only."""
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():
                    if key in shapes:
                        raise ValueError(f"tensor {key} appears in more than one shard")
                    piece = handle.get_slice(key)
                    shapes[key] = tuple(piece.get_shape())
                    dtypes.add(piece.get_dtype())
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None
        except Exception as err:  # noqa: BLE001 - a foreign or corrupt file: one line naming it
            raise ValueError(f"cannot read {file} as safetensors: {str(err).strip().splitlines()[0]}") from None
    unsupported = sorted(d for d in dtypes if d not in _STORED)
    if unsupported:
        raise ValueError(f"{files[0].parent}: tensors stored as {unsupported}; JiT weights must be fp32, fp16 or bf16")
    return shapes, dtypes


class DiffusersFolder:
    """A diffusers-style source opened for loading: layout detected, keys checked, settings read.

    ``layout`` is ``A``, ``B0`` or ``B``; ``config`` the :class:`JiTConfig`; ``settings`` the
    :class:`ModelInfo` fields the folder records (scheduler, hints, class names)."""

    def __init__(self, path: Path, root: Path | None, folder: Path, given: Path | None):
        self.path, self.root, self.folder = path, root, folder
        if root is not None and not folder.is_dir():
            raise FileNotFoundError(f"{root} is a pipeline folder without a transformer/ folder")
        if given is None:
            self.files, promised = _weight_files(folder)
        elif given.name.endswith(INDEX_FILE):
            self.files, promised = _shard_files(given)
        else:
            self.files, promised = [given], None
        self.shapes, dtypes = _headers(self.files)
        if promised is not None and promised != set(self.shapes):
            odd = sorted(promised ^ set(self.shapes))[:4]
            raise ValueError(f"{folder / INDEX_FILE}: weight_map and the shards disagree on {odd}")
        self.stored = "/".join(sorted(_STORED[d] for d in dtypes))
        self.layout = detect_layout(self.shapes)
        raw_config = read_json_object(folder / "config.json")
        if self.layout is None:
            self._no_layout(raw_config)
        self.config = jit_config(raw_config, self.layout, str(folder / "config.json"))
        prefix = a_prefix(self.shapes) if self.layout == "A" else "transformer."
        expected = layout_shapes(config_shapes(JiT, self.config), self.layout, prefix)
        check_state_dict(expected, self.shapes, self._weights_name())
        self.settings = read_settings(root or folder, self.config)

    def _weights_name(self) -> str:
        return str(self.files[0]) if len(self.files) == 1 else f"{self.folder} ({len(self.files)} shards)"

    def _no_layout(self, raw_config: dict[str, Any]) -> None:
        known = ("matches no JiT layout (A: every key under 'transformer.' or 'net.'; B0: "
                 "'adaLN_modulation_final.*'; B: 'blocks.N.attn.to_q.*')")  # fmt: skip
        try:
            expected = layout_shapes(config_shapes(JiT, jit_config(raw_config, "B0", "config.json")), "B0")
        except ValueError:
            raise ValueError(f"{self._weights_name()} {known}; its keys start {sorted(self.shapes)[:4]}") from None
        check_state_dict(expected, self.shapes, f"{self._weights_name()} {known}; compared with B0")
        raise ValueError(f"{self._weights_name()} {known}")

    def summary(self) -> str:
        """What was found and how it is read, e.g. ``diffusers pipeline, layout B0, ... (bf16, read as fp32)``."""
        kind = "pipeline" if self.root is not None else "transformer folder"
        files = f"{len(self.files)} shards" if len(self.files) > 1 else self.files[0].name
        scheduler = f"{self.settings.get('method', 'heun')}, t_eps {self.settings.get('t_eps', 0.05):g}"
        return (f"diffusers {kind}, layout {self.layout}, {files} ({self.stored}, read as fp32), "
                f"{self.config.input_size}px, {self.config.num_classes} classes, sampler {scheduler}")  # fmt: skip

    def describe(self) -> str:
        """One line naming the source and the detected layout."""
        return f"{self.path}: {self.summary()}"

    @property
    def weights(self) -> str:
        """The weight set the folder holds (recorded by our export; EMA1 otherwise)."""
        return str(self.settings.get("weights") or "ema1")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights with the official (our) names, in their stored dtype; keys and shapes were checked
        when the folder was opened."""
        state: dict[str, torch.Tensor] = {}
        for file in self.files:  # kept in the stored dtype: loading into the fp32 model converts, one copy
            with safe_open(str(file), "pt") as handle:
                state.update({k: handle.get_tensor(k) for k in handle.keys()})
        return to_official(state, self.layout)

    def info(self) -> ModelInfo:
        """The :class:`ModelInfo` the folder records."""
        return ModelInfo.create(self.config, source=f"{self.path} (diffusers layout {self.layout})", **self.settings)

    def load(self, device: torch.device) -> tuple[JiT, ModelInfo]:
        """The network (fp32, eval mode, on ``device``) and its :class:`ModelInfo`."""
        model = build_model(JiT, self.config, self.state_dict(), device, self._weights_name(), check=False)
        return model, self.info()


def open_diffusers(path: str | Path) -> DiffusersFolder | None:
    """A :class:`DiffusersFolder` when ``path`` is a diffusers-style source, else None (another kind).

    Reads only headers and JSON: the layout, keys and shapes are checked before any tensor is loaded."""
    path = Path(path).expanduser()
    found = _locate(path)
    return None if found is None else DiffusersFolder(path, *found)


# --------------------------------------------------------------------------------------------
# Settings: scheduler, hints, class names
# --------------------------------------------------------------------------------------------


def _class_names(root: Path, index: dict[str, Any], num_classes: int) -> list[str] | None:
    """ImageNet-style names: ``id2label`` in model_index.json, else ``labels/id2label_en.json``."""
    source, id2label = root / PIPELINE_INDEX, index.get("id2label")
    if id2label is None:
        label_file = next((root / f for f in LABEL_FILES if (root / f).is_file()), None)
        if label_file is None:
            return None
        source, id2label = label_file, read_json_object(label_file)
    if isinstance(id2label, list):
        id2label = dict(enumerate(id2label))
    try:
        names = {int(k): str(v) for k, v in dict(id2label).items()}
    except (TypeError, ValueError):
        raise ValueError(f"{source}: id2label must map class indices to names") from None
    if sorted(names) != list(range(num_classes)):
        raise ValueError(f"{source}: id2label names {len(names)} classes, the model has {num_classes} (0..N-1)")
    return [names[i] for i in range(num_classes)]


def read_settings(root: Path, config: JiTConfig) -> dict[str, Any]:
    """:class:`ModelInfo` keyword arguments recorded in a folder: our settings file first, then the
    scheduler config (t_eps, solver, guidance hints), then model_index.json; absent ones are left out."""
    index = _optional_json(root / PIPELINE_INDEX)
    scheduler = _optional_json(root / "scheduler" / "scheduler_config.json")
    ours = _optional_json(root / SETTINGS_FILE)

    def hint(*names: str) -> Any:
        return next((d[n] for d in (scheduler, index) for n in names if d.get(n) is not None), None)

    lo, hi = hint("guidance_interval_min", "interval_min"), hint("guidance_interval_max", "interval_max")
    interval = None if lo is None and hi is None else (0.1 if lo is None else lo, 1.0 if hi is None else hi)
    fallbacks = {"noise_scale": hint("noise_scale") or (2.0 if config.input_size >= 512 else 1.0),
                 "t_eps": hint("t_eps"), "cfg": hint("guidance_scale", "cfg"), "cfg_interval": interval,
                 "method": hint("solver")}  # fmt: skip
    settings = {k: fallbacks.get(k) if v is None else v for k, v in recorded_settings(ours).items()}
    settings.update(weights=ours.get("weights"), step=ours.get("step"),
                    class_names=_class_names(root, index, config.num_classes))  # fmt: skip
    if settings["method"] not in (None, *METHODS):  # every solver we write loads back
        raise ValueError(f"{root}: solver {settings['method']!r} is not one of {', '.join(METHODS)}")
    return {k: v for k, v in settings.items() if v is not None}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _model_index(layout: str, names: list[str]) -> dict[str, Any]:
    community = layout == "B0"  # B0: the community modules; B: the diffusers class
    index: dict[str, Any] = {
        "_class_name": ["pipeline_jit", "JiTPipeline"] if community else "JiTPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["scheduling_jit", "JiTScheduler"],
        "transformer": ["transformer_jit" if community else "diffusers", "JiTTransformer2DModel"],
    }
    if names != [str(i) for i in range(len(names))]:
        index["id2label"] = {str(i): name for i, name in enumerate(names)}
    return index


def save_diffusers(
    model: torch.nn.Module,
    folder: str | Path,
    info: ModelInfo | None = None,
    *,
    layout: str = "B0",
    dtype: str = "fp32",
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a diffusers pipeline folder in ``layout`` B0 or B (see the module docstring).

    ``dtype`` fp32 or bf16 (``pos_embed`` stays fp32). Atomic; refuses a non-empty ``folder`` unless
    ``overwrite``. Returns the folder."""
    model = unwrap(model)
    if layout not in ("B0", "B") or dtype not in ("fp32", "bf16"):
        raise ValueError(f"diffusers export: layout must be B0 or B and dtype fp32 or bf16, got {layout}, {dtype}")
    info = export_info(model, info)
    if info.prediction != "x":
        raise ValueError(f"the diffusers JiT pipelines run x-prediction models; this one predicts {info.prediction}")
    transformer_config = diffusers_config(model.config, DIFFUSERS_VERSION)
    tensors = from_official(export_tensors(model, resolve_dtype(dtype)), layout)
    scheduler = {"_class_name": "JiTScheduler", "_diffusers_version": DIFFUSERS_VERSION,
                 "num_train_timesteps": 1000, "t_eps": info.t_eps, "solver": info.method}  # fmt: skip
    ours = {"format": FORMAT, "layout": layout, "dtype": dtype, "weights": info.weights, **settings_blocks(info),
            "source": info.source, "step": info.step}  # fmt: skip
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        (tmp / "transformer").mkdir()
        (tmp / "scheduler").mkdir()
        atomic_write_path(tmp / "transformer" / WEIGHTS_FILE,
                          lambda path: save_file(tensors, str(path), metadata={"format": "pt"}))  # fmt: skip
        save_json(tmp / "transformer" / "config.json", transformer_config)
        save_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        save_json(tmp / PIPELINE_INDEX, _model_index(layout, list(info.class_names)))
        save_json(tmp / SETTINGS_FILE, ours)
    return Path(folder).expanduser()
