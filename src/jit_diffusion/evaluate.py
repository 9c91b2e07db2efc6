"""Evaluation: sample sets for FID, Inception metrics (FID, IS, precision/recall), offline classifier
metrics (FD-<dataset>, class accuracy), CFG x EMA sweeps, and reference statistics.

``jit eval MODEL --num N --out DIR`` writes, per (EMA, CFG) setting, ``DIR/<setting>/samples/`` (chunks
``chunk_00000.npz``: ``arr_0`` uint8 (n, H, W, 3), ``labels``) and ``DIR/<setting>/metrics.json``, and for
the whole sweep ``DIR/sweep.{md,csv,png}``. Image ``i`` gets class ``i % num_classes`` and the noise of
index ``i``, so chunks are independent: a rerun skips complete chunks and ranks of a torchrun job
generate the chunks ``k`` with ``k % world_size == rank``; rank 0 then computes the metrics.

Inception metrics use torch-fidelity's Inception-v3 (the TF-FID port behind the paper's numbers): FID
from the 2048-d pool features (the Fréchet distance below), IS from its logits, precision/recall with
k = 3 neighbours on the same pool features. The weights come from torch-fidelity's download cache or
``--inception-weights``; without them the command stops before generating anything.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .device import resolve_device
from .fileio import atomic_write_bytes, save_json
from .frechet import StatsAccumulator, feature_stats, frechet_distance
from .generate import add_sampling_args, generate
from .loading import open_source
from .sampling import METHODS, network_evaluations, resolve_grid, sampling_times

INCEPTION_METRICS = ("fid", "is", "pr")
FID_FEATURE_LAYER = "2048"  # torch-fidelity's pool features; lower layers (64, 192, 768) exist too
CLASSIFIER_METRICS = ("fd-emoji", "acc")
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


# --------------------------------------------------------------------------------------------
# Inception metrics (torch-fidelity)
# --------------------------------------------------------------------------------------------


def default_inception_path() -> Path:
    """Where torch-fidelity caches the Inception weights it downloads (torch hub's checkpoints folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[1]


def inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path`` if given, else torch-fidelity's cached download; else a clear error."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--inception-weights {path} does not exist")
        return path
    cached = default_inception_path()
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        f"Inception weights not found at {cached}: download {INCEPTION_WEIGHTS_URL} there (torch-fidelity does "
        "so on first use when online) or pass --inception-weights PATH; offline, use --metrics fd-emoji,acc"
    )


class UInt8Images(Dataset):
    """Images as uint8 (3, H, W) tensors (what torch-fidelity's extractors read) from uint8 (N, H, W, 3)
    arrays or from a dataset of ``(image, label)`` items."""

    def __init__(self, source: np.ndarray | Dataset):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        if isinstance(self.source, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self.source[index].transpose(2, 0, 1)))
        item = self.source[index]
        return item[0] if isinstance(item, (tuple, list)) else item


def _uint8_batches(images: np.ndarray | Dataset, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) batches of an (N, H, W, 3) array or a dataset."""
    if isinstance(images, np.ndarray):
        for lo in range(0, len(images), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(images[lo : lo + batch_size])).permute(0, 3, 1, 2)
        return
    yield from DataLoader(UInt8Images(images), batch_size=batch_size, num_workers=num_workers)


@dataclass
class InceptionFeatures:
    """torch-fidelity's Inception-v3 returning the FID layer's features and the IS logits."""

    weights: Path
    device: torch.device = torch.device("cpu")
    feature_layer: str | None = None  # default FID_FEATURE_LAYER
    batch_size: int = 64

    def __post_init__(self) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.feature_layer = self.feature_layer or FID_FEATURE_LAYER
        self.layers = [self.feature_layer, "logits_unbiased"]
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", self.layers, feature_extractor_weights_path=str(self.weights)
        ).to(self.device)

    @torch.no_grad()
    def batches(self, images: np.ndarray | Dataset, num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Per batch: {"features": (B, D), "logits": (B, 1008)} float32 on the CPU."""
        for batch in _uint8_batches(images, self.batch_size, num_workers):
            feats, logits = self.net(batch.to(self.device))
            yield {"features": feats.float().cpu(), "logits": logits.float().cpu()}

    def __call__(self, images: np.ndarray | Dataset, num_workers: int = 0) -> dict[str, torch.Tensor]:
        parts = list(self.batches(images, num_workers))
        if not parts:
            raise ValueError("no images to extract features from")
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def reference(self, images: np.ndarray | Dataset, keep_features: bool = False, num_workers: int = 0) -> dict:
        """{"mu", "sigma", "count"[, "features"]} of a (possibly large) reference set, streamed."""
        acc, kept = StatsAccumulator(), []
        for out in self.batches(images, num_workers):
            acc.update(out["features"].numpy())
            if keep_features:
                kept.append(out["features"].numpy())
        mu, sigma = acc.stats()
        stats = {"mu": mu, "sigma": sigma, "count": acc.count}
        if keep_features:
            stats["features"] = np.concatenate(kept)
        return stats


def inception_scores(
    features: dict[str, torch.Tensor], reference: dict, metrics: Sequence[str], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """FID / IS / precision-recall of generated ``features`` (from :class:`InceptionFeatures`) against
    ``reference`` (``mu``, ``sigma``; ``features`` too for precision/recall)."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    out: dict[str, float] = {}
    feats = features["features"]
    if "fid" in metrics:
        mu, sigma = feature_stats(feats)
        out["FID"] = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
    if "is" in metrics:
        isc = isc_features_to_metric(features["logits"], splits=min(10, len(feats)), shuffle=True, rng_seed=2020)
        out["IS"], out["IS_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    if "pr" in metrics:
        if reference.get("features") is None:
            raise ValueError("precision/recall need reference features: use --ref-dir or fid-stats --with-features")
        real = torch.as_tensor(np.asarray(reference["features"]), dtype=torch.float32, device=device)
        prc = prc_features_to_metric(feats.to(device), real, prc_neighborhood=3, prc_batch_size=10000,
                                     save_cpu_ram=True, verbose=False)  # fmt: skip
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    return out


def save_stats(path: str | Path, stats: dict, **extra) -> Path:
    """Write reference statistics (``mu``, ``sigma``, ``count`` [, ``features``]) as an ``.npz``, atomically."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in {**stats, **extra}.items() if v is not None}
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return path


def load_stats(path: str | Path) -> dict:
    """Read reference statistics: ``mu`` and ``sigma`` (ADM/torch-fidelity layout), optional ``features``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} do not exist")
    with np.load(path, allow_pickle=False) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} holds no 'mu'/'sigma' arrays (make one with `jit fid-stats`)")
        out = {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64)}
        out["count"] = int(f["count"]) if "count" in f else None
        out["features"] = f["features"] if "features" in f else None
        out["source"] = str(f["source"]) if "source" in f else str(path)
    return out


# --------------------------------------------------------------------------------------------
# Chunked, resumable, rank-sharded generation
# --------------------------------------------------------------------------------------------


def sample_labels(num: int, num_classes: int) -> np.ndarray:
    """Class of image i: ``i % num_classes`` (every class equally often when num is a multiple); 0 when
    unconditional (the null label of a num_classes = 0 model)."""
    if num_classes <= 0:
        return np.zeros(num, dtype=np.int64)
    return np.arange(num, dtype=np.int64) % num_classes


def chunk_path(samples_dir: Path, k: int) -> Path:
    return samples_dir / f"chunk_{k:05d}.npz"


def _chunk_complete(path: Path, expected: int) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path) as f:
            return len(f["labels"]) == expected and f["arr_0"].shape[0] == expected
    except Exception:  # noqa: BLE001 - unreadable: regenerate it
        return False


def generate_chunks(
    model,
    samples_dir: str | Path,
    labels: np.ndarray,
    *,
    chunk_size: int,
    rank: int = 0,
    world_size: int = 1,
    progress: str | None = None,
    **gen_kwargs,
) -> int:
    """Generate the missing chunks of this rank (``k % world_size == rank``) into ``samples_dir``.

    Chunk k holds images ``k*chunk_size ...``; each is written atomically. Returns the number of chunks
    generated (complete chunks are skipped)."""
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    num_chunks = math.ceil(len(labels) / chunk_size)
    made = 0
    for k in range(rank, num_chunks, world_size):
        lo, hi = k * chunk_size, min(len(labels), (k + 1) * chunk_size)
        path = chunk_path(samples_dir, k)
        if _chunk_complete(path, hi - lo):
            continue
        start = time.perf_counter()
        images = generate(model, labels[lo:hi], start_index=lo, **gen_kwargs)
        chunk_labels = labels[lo:hi]
        atomic_write_bytes(path, lambda f, im=images, y=chunk_labels: np.savez(f, arr_0=im, labels=y))
        made += 1
        if progress:
            print(f"{progress}: chunk {k + 1}/{num_chunks} ({hi - lo} images) in {time.perf_counter() - start:.1f} s",
                  flush=True)  # fmt: skip
    return made


def iter_chunks(samples_dir: str | Path, num: int, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images uint8 (n, H, W, 3), labels (n,)) of each chunk in order; a missing chunk is an error."""
    samples_dir = Path(samples_dir)
    for k in range(math.ceil(num / chunk_size)):
        path = chunk_path(samples_dir, k)
        expected = min(num, (k + 1) * chunk_size) - k * chunk_size
        if not _chunk_complete(path, expected):
            raise FileNotFoundError(f"sample chunk {path} is missing or incomplete: rerun the same command")
        with np.load(path) as f:
            yield f["arr_0"], f["labels"]


def write_adm_npz(path: str | Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]], num: int) -> Path:
    """Stream chunks into one ``.npz`` with ``arr_0`` uint8 (N, H, W, 3) (what the ADM evaluation suite
    reads) and ``arr_1`` labels (N,), without holding all images in memory; written atomically."""
    path = Path(path)
    all_labels = []

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            first = True
            with zf.open("arr_0.npy", "w", force_zip64=True) as member:
                for images, labels in chunks:
                    if first:
                        header = {"descr": np.lib.format.dtype_to_descr(images.dtype), "fortran_order": False,
                                  "shape": (num, *images.shape[1:])}  # fmt: skip
                        np.lib.format.write_array_header_2_0(member, header)
                        first = False
                    member.write(np.ascontiguousarray(images).tobytes())
                    all_labels.append(labels)
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.concatenate(all_labels).astype(np.int64))
            zf.writestr("arr_1.npy", buffer.getvalue())

    atomic_write_bytes(path, write)
    return path


# --------------------------------------------------------------------------------------------
# Sweep summary
# --------------------------------------------------------------------------------------------


@dataclass
class Setting:
    """One point of a sweep: which weights, guidance weight, solver and steps (named in the folder only
    when the sweep varies the solver or the steps)."""

    ema: str
    cfg: float
    method: str = "heun"
    steps: int = 50
    name_sampler: bool = False

    @property
    def name(self) -> str:
        return f"{self.ema}-cfg{self.cfg:g}" + (f"-{self.method}-{self.steps}" if self.name_sampler else "")


def write_sweep(out_dir: str | Path, rows: list[dict]) -> list[Path]:
    """``sweep.md`` (a table), ``sweep.csv`` and ``sweep.png`` (each metric vs cfg, one line per EMA)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    metric_keys = []
    for row in rows:
        metric_keys += [k for k in row["metrics"] if k not in metric_keys]
    header = ["setting", "ema", "cfg", "method", "steps", "nfe", "num", *metric_keys]
    sampler = [[r["sampling"]["method"], r["sampling"]["steps"], r["network_evaluations"]] for r in rows]
    table = [[r["setting"], r["ema"], f"{r['cfg']:g}", *map(str, solver), str(r["num"]),
              *(_fmt(r["metrics"].get(k)) for k in metric_keys)] for r, solver in zip(rows, sampler)]  # fmt: skip
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in table]
    atomic_write_bytes(out_dir / "sweep.md", lambda f: f.write(("\n".join(md) + "\n").encode()))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[r["setting"], r["ema"], r["cfg"], *solver, r["num"],
                       *(r["metrics"].get(k, "") for k in metric_keys)]
                      for r, solver in zip(rows, sampler)])  # fmt: skip
    atomic_write_bytes(out_dir / "sweep.csv", lambda f: f.write(text.getvalue().encode()))

    plotted = [k for k in metric_keys if not k.endswith("_std")] or ["num"]
    fig = Figure(figsize=(4.5 * len(plotted), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    # a sweep over solvers/steps: each metric against network evaluations, a line per solver (and EMA, CFG);
    # otherwise each metric against the CFG weight, a line per EMA
    by_nfe = len({tuple(solver[:2]) for solver in sampler}) > 1
    lines = [(r["sampling"]["method"], r["ema"], r["cfg"]) if by_nfe else (r["ema"],) for r in rows]
    varying = [len({line[j] for line in lines}) > 1 or j == 0 for j in range(len(lines[0]))] if lines else []
    for i, key in enumerate(plotted):
        ax = fig.add_subplot(1, len(plotted), i + 1)
        for line in dict.fromkeys(lines):
            members = [(r, solver) for r, solver, own in zip(rows, sampler, lines) if own == line]
            values = [(solver[2] if by_nfe else r["cfg"], r["num"] if key == "num" else r["metrics"].get(key))
                      for r, solver in members]  # fmt: skip
            pts = sorted((x, v) for x, v in values if v is not None)
            label = " ".join(f"cfg {p:g}" if isinstance(p, float) else p for p, show in zip(line, varying) if show)
            ax.plot([x for x, _ in pts], [v for _, v in pts], marker="o", label=label)
        if by_nfe:
            ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image" if by_nfe else "CFG weight")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(out_dir / "sweep.png", lambda f: f.write(png.getvalue()))
    return [out_dir / "sweep.md", out_dir / "sweep.csv", out_dir / "sweep.png"]


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# jit eval
# --------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> list[str]:
    """``"fid,is,fd-emoji,acc"`` -> names; ``fd`` and any ``fd-<data>`` mean the classifier FD; ``none`` -> []."""
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if names == ["none"]:
        return []
    out = []
    for name in names:
        if name == "fd" or name.startswith("fd-"):
            name = "fd-emoji"
        if name not in INCEPTION_METRICS + CLASSIFIER_METRICS:
            raise ValueError(f"unknown metric {name!r}: choose from fid, is, pr, fd-emoji (or fd-<data>), acc, none")
        if name not in out:
            out.append(name)
    return out


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"{flag} expects comma-separated numbers like 1.5,2.0, got {text!r}") from err
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def _distributed(device_arg: str):
    """torchrun setup with a long barrier timeout (ranks can be unbalanced when resuming)."""
    import torch.distributed as dist

    from .distributed import init_distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dev = resolve_device(device_arg)
        kwargs = {}
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
            kwargs["device_id"] = dev
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=12), **kwargs)
    return init_distributed(device_arg)


def _check_data_spec(spec: str | None, what: str) -> None:
    if spec is not None and spec != "emoji" and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"{what} {spec!r} does not exist (expected 'emoji' or a folder)")


def _setting_meta(args, info, setting: Setting, interval, num: int, source: str) -> dict:
    """Everything that determines a setting's images; a resumed run must match it (the time grid and the
    final step are named only when they differ from the public sampler's, so older folders still resume)."""
    meta = {
        "model": source, "weights": setting.ema, "cfg": setting.cfg, "cfg_interval": list(interval),
        "steps": setting.steps, "method": setting.method, "seed": args.seed, "num": num,
        "chunk_size": args.chunk_size, "image_size": info.image_size, "num_classes": info.num_classes,
        "prediction": info.prediction, "noise_scale": info.noise_scale, "t_eps": info.t_eps,
        "precision": args.precision,
    }  # fmt: skip
    grid, shift = resolve_grid(setting.method, args.time_grid, args.shift)
    if grid != "uniform":
        meta.update(time_grid=grid, **({"shift": shift} if grid == "shifted" else {}))
    if args.final != "ode":
        meta["final"] = args.final
    return meta


def _check_resume(meta_path: Path, meta: dict, write: bool) -> None:
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        changed = sorted(k for k in meta if old.get(k) != meta[k] and k != "model")
        if changed:
            raise ValueError(f"{meta_path.parent} holds samples made with other settings ({', '.join(changed)}): "
                             "use another --out or delete that folder")  # fmt: skip
    elif write:
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        save_json(meta_path, meta)


def run_eval(args: argparse.Namespace) -> None:
    metrics = parse_metrics(args.metrics)
    cfgs = parse_floats(args.cfg, "--cfg") if args.cfg else None
    for method in args.method:
        if method not in METHODS:
            raise ValueError(f"--method: unknown solver {method!r}; choose from {', '.join(METHODS)}")
        resolve_grid(method, args.time_grid, args.shift)  # a bad --time-grid/--shift pair fails before any sampling
    if min(args.steps) < 1:
        raise ValueError(f"--steps must be >= 1, got {min(args.steps)}")
    inception = [m for m in metrics if m in INCEPTION_METRICS]
    # cheap checks first, on every rank: nothing is generated when a metric could not be computed
    weights_path = inception_weights(args.inception_weights) if inception else None
    if args.ref_stats and args.ref_dir:
        raise ValueError("give at most one of --ref-stats and --ref-dir")
    if args.ref_stats and not Path(args.ref_stats).expanduser().is_file():
        raise FileNotFoundError(f"--ref-stats {args.ref_stats} does not exist")
    if "pr" in metrics and args.ref_stats:
        with np.load(Path(args.ref_stats).expanduser()) as f:
            if "features" not in f:
                raise ValueError(f"precision/recall need reference features: {args.ref_stats} has only mu/sigma")
    _check_data_spec(args.ref_dir, "--ref-dir")
    _check_data_spec(args.data, "--data")
    if args.classifier and not (Path(args.classifier).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"--classifier {args.classifier} holds no classifier (config.json)")

    dist_info = _distributed(args.device)
    device = dist_info.device
    models = open_source(args.model_path)
    emas = [e.strip() for e in (args.ema or "").split(",") if e.strip()] or [models.default_weights]
    models.check(emas)
    model, info = models.load(emas[0], device)
    data = args.data or models.data
    if inception and not (args.ref_stats or args.ref_dir or data):
        raise ValueError("FID needs a reference: pass --ref-stats STATS.npz or --ref-dir FOLDER")
    if any(m in CLASSIFIER_METRICS for m in metrics) and not (args.classifier or data):
        raise ValueError("fd-emoji/acc need the dataset: pass --data SPEC or --classifier PATH")
    if args.per_class is not None:
        num = args.per_class * max(info.num_classes, 1)
        if args.num is not None and args.num != num:
            raise ValueError(f"--num {args.num} != --per-class {args.per_class} x {max(info.num_classes, 1)} classes")
    elif args.num is not None:
        num = args.num
    else:
        raise ValueError("give --num N or --per-class K")
    if num < 2:
        raise ValueError(f"need at least 2 images, got {num}")
    if cfgs is None:
        cfgs = [info.cfg]
    if info.num_classes == 0 and cfgs != [1.0]:
        if dist_info.is_main:
            print("unconditional model: CFG does not apply, using cfg 1")
        cfgs = [1.0]
    if info.num_classes == 0 and "acc" in metrics and dist_info.is_main:
        print("unconditional model: class accuracy does not apply, skipping acc")
    interval = tuple(args.interval) if args.interval is not None else tuple(info.cfg_interval)
    labels = sample_labels(num, info.num_classes)
    out_dir = Path(args.out)
    methods, steps_list = list(dict.fromkeys(args.method)), list(dict.fromkeys(args.steps))
    name_sampler = len(methods) > 1 or len(steps_list) > 1
    settings = [Setting(ema, cfg, method, steps, name_sampler)
                for ema in emas for cfg in cfgs for method in methods for steps in steps_list]  # fmt: skip

    # 1. generation (every rank its share of the chunks)
    gen_seconds: dict[str, float] = {}
    gen_chunks: dict[str, int] = {}
    for ema in emas:
        model, info = models.load(ema, device)
        for setting in [s for s in settings if s.ema == ema]:
            samples_dir = out_dir / setting.name / "samples"
            meta = _setting_meta(args, info, setting, interval, num, str(models.file))
            _check_resume(samples_dir / "settings.json", meta, write=dist_info.is_main)
            start = time.perf_counter()
            gen_chunks[setting.name] = generate_chunks(
                model, samples_dir, labels, chunk_size=args.chunk_size, rank=dist_info.rank,
                world_size=dist_info.world_size, progress=setting.name if dist_info.is_main else None,
                image_size=info.image_size, seed=args.seed, cfg=setting.cfg, cfg_interval=interval,
                steps=setting.steps, method=setting.method, noise_scale=info.noise_scale, t_eps=info.t_eps,
                prediction=info.prediction, grid=args.time_grid, shift=args.shift, final=args.final,
                batch_size=args.batch_size, device=device, precision=args.precision,
            )  # fmt: skip
            gen_seconds[setting.name] = round(time.perf_counter() - start, 2)
    from .distributed import barrier, cleanup

    barrier(dist_info)
    if not dist_info.is_main:
        cleanup(dist_info)
        return
    del model

    # 2. metrics (rank 0)
    inception_net = reference = classifier = None
    if inception:
        inception_net = InceptionFeatures(weights_path, device, batch_size=args.metric_batch_size)
        reference = _inception_reference(args, inception_net, data, info.image_size, out_dir, "pr" in metrics)
    if any(m in CLASSIFIER_METRICS for m in metrics):
        from .classifier import ClassifierMetrics

        classifier = ClassifierMetrics.create(data, info.image_size, classifier=args.classifier,
                                              reference_split=args.classifier_ref_split, device=device)  # fmt: skip
        names = classifier.config.class_names
        if info.num_classes and (len(names) != info.num_classes or (info.class_names and info.class_names != names)):
            raise ValueError(f"the classifier's classes ({len(names)}: {names[:3]}...) are not the model's "
                             f"({info.num_classes}): pass --classifier trained on the model's dataset")  # fmt: skip
    rows = []
    for setting in settings:
        samples_dir = out_dir / setting.name / "samples"
        start = time.perf_counter()
        result = _score_setting(samples_dir, num, args.chunk_size, metrics, inception_net, reference, classifier,
                                conditional=info.num_classes > 0, device=device)  # fmt: skip
        if args.adm_npz:
            h = info.image_size
            npz = write_adm_npz(out_dir / setting.name / f"samples_{num}x{h}x{h}x3.npz",
                                iter_chunks(samples_dir, num, args.chunk_size), num)  # fmt: skip
            print(f"wrote {npz}")
        times = sampling_times(setting.method, setting.steps, grid=args.time_grid, shift=args.shift, cfg=setting.cfg,
                               cfg_interval=interval, t_eps=info.t_eps)  # fmt: skip
        record = {
            "setting": setting.name, "ema": setting.ema, "cfg": setting.cfg, "num": num, "metrics": result,
            "network_evaluations": network_evaluations(setting.method, times),
            "sampling": _setting_meta(args, info, setting, interval, num, str(models.file)),
            "reference": None if reference is None else reference.get("source"),
            "classifier": None if classifier is None else str(classifier.folder),
            "classifier_reference_split": None if classifier is None else classifier.reference_split,
            "world_size": dist_info.world_size, "device": str(device),
            "chunks_generated": gen_chunks.get(setting.name),  # by this run (rank 0's share under torchrun)
            "generation_seconds": gen_seconds.get(setting.name),
            "metric_seconds": round(time.perf_counter() - start, 2),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        save_json(out_dir / setting.name / "metrics.json", record)
        rows.append(record)
        print(f"{setting.name}: " + (", ".join(f"{k} {_fmt(v)}" for k, v in result.items()) or "generated"), flush=True)
    for path in write_sweep(out_dir, rows):
        print(f"wrote {path}")
    cleanup(dist_info)


def _inception_reference(args, net: InceptionFeatures, data: str | None, image_size: int, out_dir: Path,
                         need_features: bool) -> dict:  # fmt: skip
    """Reference statistics: --ref-stats, else the Inception features of --ref-dir (or the model's training
    data) preprocessed like training data, cached in ``out_dir``."""
    if args.ref_stats:
        stats = load_stats(args.ref_stats)
        stats["source"] = str(Path(args.ref_stats).expanduser().resolve())
        return stats
    from .data import load_dataset

    spec = args.ref_dir or data
    source = f"{spec if spec == 'emoji' else Path(spec).expanduser().resolve()}:{args.ref_split}:{image_size}px"
    source += f":{net.feature_layer}"
    cached = out_dir / "reference_inception.npz"
    if cached.is_file():
        stats = load_stats(cached)
        if stats["source"] == source and (stats["features"] is not None or not need_features):
            return stats
    print(f"computing Inception reference statistics of {source}")
    dataset = load_dataset(spec, image_size, split=args.ref_split)
    stats = net.reference(dataset, keep_features=need_features, num_workers=args.num_workers)
    save_stats(cached, stats, source=np.array(source))
    stats["source"] = source
    return stats


def _score_setting(samples_dir: Path, num: int, chunk_size: int, metrics: Sequence[str], inception_net, reference,
                   classifier, conditional: bool, device) -> dict[str, float]:  # fmt: skip
    """All requested metrics of one setting's samples, streamed chunk by chunk."""
    inc_parts, clf_parts, all_labels = [], [], []
    for images, labels in iter_chunks(samples_dir, num, chunk_size):
        all_labels.append(labels)
        if inception_net is not None:
            inc_parts.append(inception_net(images))
        if classifier is not None:
            clf_parts.append(classifier.extract(images))
    result: dict[str, float] = {}
    if inception_net is not None:
        feats = {k: torch.cat([p[k] for p in inc_parts]) for k in inc_parts[0]}
        result.update(inception_scores(feats, reference, metrics, device=device))
    if classifier is not None:
        labels = np.concatenate(all_labels) if "acc" in metrics and conditional else None
        scores = classifier.score(np.concatenate([f for f, _ in clf_parts]), np.concatenate([p for _, p in clf_parts]),
                                  labels)  # fmt: skip
        if "fd-emoji" not in metrics:
            del scores[classifier.fd_name]
        result.update(scores)
    return result


# --------------------------------------------------------------------------------------------
# jit fid-stats
# --------------------------------------------------------------------------------------------


def run_fid_stats(args: argparse.Namespace) -> None:
    from .data import load_dataset

    weights = inception_weights(args.inception_weights)
    _check_data_spec(args.source, "dataset")
    device = resolve_device(args.device)
    dataset = load_dataset(args.source, args.img_size, split=args.split)
    net = InceptionFeatures(weights, device, batch_size=args.batch_size)
    start = time.perf_counter()
    stats = net.reference(dataset, keep_features=args.with_features, num_workers=args.num_workers)
    spec = args.source if args.source == "emoji" else str(Path(args.source).expanduser().resolve())
    path = save_stats(args.out, stats, source=np.array(f"{spec}:{args.split}:{args.img_size}px:{net.feature_layer}"))
    print(f"wrote {path}: {stats['count']} images, {net.feature_layer}-d Inception features, "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip


def add_cli(sub) -> None:
    p = sub.add_parser("eval", help="generate sample sets and compute FID/IS/PR or FD-emoji/accuracy, with sweeps",
                       description="Generate N images per (EMA, CFG) setting in resumable chunks (torchrun shards "
                                   "them over ranks) and compute metrics; writes DIR/<setting>/metrics.json and "
                                   "DIR/sweep.{md,csv,png}. --steps 10,20 --method heun,dpm++2m sweeps the "
                                   "sampler and plots each metric against network evaluations.")  # fmt: skip
    p.add_argument("model_path", help="run folder, checkpoint .pt, exported folder, or official checkpoint .pth")
    p.add_argument("--num", "--num-images", dest="num", type=int, default=None,
                   help="images per setting, class of image i = i %% num_classes (under torchrun spell it "
                        "--num-images: torchrun takes --num for its own --numa-binding)")  # fmt: skip
    p.add_argument("--per-class", type=int, default=None, help="images per class (N = K x num_classes)")
    p.add_argument("--out", required=True, help="output folder (rerunning the same command resumes)")
    p.add_argument("--cfg", default=None, help="guidance weight(s), comma list for a sweep (default: the model's)")
    p.add_argument("--ema", default=None,
                   help="weights, comma list for a sweep: ema1 (default; an export folder: its own), ema2, raw")
    p.add_argument("--metrics", default="fid,is",
                   help="comma list of fid, is, pr (Inception), fd-emoji, acc (offline classifier), or none "
                        "(default fid,is)")  # fmt: skip
    p.add_argument("--ref-stats", default=None, help="precomputed Inception statistics .npz (mu, sigma)")
    p.add_argument("--ref-dir", default=None, help="reference images: a folder or 'emoji' (default: training data)")
    p.add_argument("--ref-split", default="train", help="split of --ref-dir (default train)")
    p.add_argument("--inception-weights", default=None,
                   help=f"Inception weights file (default: torch-fidelity's cache, {default_inception_path()})")
    p.add_argument("--data", default=None, help="the model's dataset for fd-emoji/acc (default: from the checkpoint)")
    p.add_argument("--classifier", default=None, help="classifier folder for fd-emoji/acc (default: cached/trained)")
    p.add_argument("--classifier-ref-split", default="train", choices=("train", "heldout", "all"),
                   help="real images FD-emoji compares against (default train)")  # fmt: skip
    p.add_argument("--adm-npz", action="store_true", help="also write all samples as one .npz (arr_0) per setting")
    p.add_argument("--chunk-size", type=int, default=500, help="images per resumable chunk (default 500)")
    p.add_argument("--metric-batch-size", type=int, default=64, help="images per Inception batch (default 64)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading workers for reference images")
    add_sampling_args(p, sweep=True)
    p.set_defaults(func=run_eval)

    s = sub.add_parser("fid-stats", help="Inception reference statistics (mu, sigma) of an image folder or emoji",
                       description="Reference statistics for FID: 2048-d Inception pool features of a dataset, "
                                   "preprocessed exactly like training data (ADM centre crop).")  # fmt: skip
    s.add_argument("source", help="an image folder, a dataset cache, or 'emoji'")
    s.add_argument("--img-size", type=int, required=True, help="image size the model generates")
    s.add_argument("--out", required=True, help="statistics file to write (.npz)")
    s.add_argument("--split", default="train", help="dataset split (default train)")
    s.add_argument("--inception-weights", default=None, help="Inception weights file (default: torch-fidelity's cache)")
    s.add_argument("--with-features", action="store_true", help="also store the features (for precision/recall)")
    s.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    s.add_argument("--num-workers", type=int, default=0, help="data-loading workers")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda")
    s.set_defaults(func=run_fid_stats)

