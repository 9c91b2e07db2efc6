"""``jit eval``: plan, generate and score sample sets (its flags are :mod:`jit_diffusion.cli.eval`).

``jit eval MODEL --num N --out DIR`` writes, per setting of the sweep (weights x CFG, :mod:`.sweep`),
``DIR/<setting>/samples/`` (resumable chunks, :mod:`.sample_store`) and ``DIR/<setting>/metrics.json``
(Inception FID/IS/PR or the offline classifier's FD-<dataset> and class accuracy, :mod:`.metrics`),
and for the whole sweep ``DIR/sweep.{md,csv,png}``. Under torchrun every rank generates its share of
the chunks; rank 0 then computes the metrics. Every check that can fail runs before anything is
generated: without Inception weights the command stops at once. Any model family: a pMF model sweeps its
steps (``--steps 1,2``), omega (``--cfg``) and interval (our time) with its one sampler, ``pmf``, whose
network evaluations are its steps. :func:`run_eval` still takes the
parsed flags (an ``argparse.Namespace``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..core.distributed import barrier, cleanup, init_distributed
from ..core.fileio import save_json
from ..diffusion.generate import (
    DEFAULT_STEPS,
    SAMPLER_NAMES,
    check_cfg,
    check_class_scale,
    check_method,
    compile_for_sampling,
    evaluations,
)
from ..diffusion.sampling import METHODS, resolve_grid, sampling_times
from ..formats.loading import Source, open_source
from .frechet import StatsAccumulator, feature_stats, frechet_distance
from .metrics import (
    INCEPTION_WEIGHTS_URL,
    InceptionFeatures,
    Scorer,
    UInt8Images,
    dataset_reference,
    inception_scores,
    inception_weights,
    load_stats,
    needs_classifier,
    needs_inception,
    parse_metrics,
)
from .sample_store import (
    check_resume,
    generate_chunks,
    iter_chunks,
    sample_labels,
    weights_digest,
    write_adm_npz,
)
from .sweep import Setting, format_value, parse_list, sweep_settings, write_sweep

# the names tests and scripts have imported from here since before the split
__all__ = ["INCEPTION_WEIGHTS_URL", "InceptionFeatures", "StatsAccumulator", "UInt8Images",
           "feature_stats", "frechet_distance", "generate_chunks", "inception_scores", "inception_weights",
           "run_eval", "sample_labels"]  # fmt: skip


@dataclass
class EvalPlan:
    """What ``jit eval`` will do, resolved from its flags and the model before anything is generated."""

    metrics: list[str]
    settings: list[Setting]
    labels: np.ndarray  # (num,) class of each image
    interval: tuple[float, float]
    data: str | None  # the model's dataset spec (classifier metrics, default Inception reference)
    source: str  # the model file (resolved), recorded with the samples
    out_dir: Path
    weights: dict[str, dict] = field(default_factory=dict)  # per weight set: step, weights_sha256 (_generate)

    @property
    def num(self) -> int:
        return len(self.labels)

    @property
    def inception(self) -> bool:
        return needs_inception(self.metrics)

    @property
    def classifier(self) -> bool:
        return needs_classifier(self.metrics)


def check_data_spec(spec: str | None, what: str) -> None:
    if spec is not None and spec != "emoji" and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"{what} {spec!r} does not exist (expected 'emoji' or a folder)")


def _check_flags(args: argparse.Namespace, metrics: list[str]) -> None:
    """The checks that need no model, on every rank: nothing is generated when a metric could not be computed."""
    if args.ref_stats and args.ref_dir:
        raise ValueError("give at most one of --ref-stats and --ref-dir")
    if args.ref_stats and not Path(args.ref_stats).expanduser().is_file():
        raise FileNotFoundError(f"--ref-stats {args.ref_stats} does not exist")
    if "pr" in metrics and args.ref_stats:
        with np.load(Path(args.ref_stats).expanduser()) as f:
            if "features" not in f:
                raise ValueError(f"precision/recall need reference features: {args.ref_stats} has only mu/sigma")
    check_data_spec(args.ref_dir, "--ref-dir")
    check_data_spec(args.data, "--data")
    if args.classifier and not (Path(args.classifier).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"--classifier {args.classifier} holds no classifier (config.json)")


def _image_count(args: argparse.Namespace, num_classes: int) -> int:
    """Images per setting from --num or --per-class (K x classes)."""
    if args.per_class is not None:
        num = args.per_class * max(num_classes, 1)
        if args.num is not None and args.num != num:
            raise ValueError(f"--num {args.num} != --per-class {args.per_class} x {max(num_classes, 1)} classes")
    elif args.num is not None:
        num = args.num
    else:
        raise ValueError("give --num N or --per-class K")
    if num < 2:
        raise ValueError(f"need at least 2 images, got {num}")
    return num


def _plan(args, metrics: list[str], axes: SweepAxes, emas: list[str], models: Source, info,
          verbose: bool) -> EvalPlan:  # fmt: skip
    """The sweep's settings, the images' labels and the sampling interval; fails on a missing reference."""
    data = args.data or models.data
    if needs_inception(metrics) and not (args.ref_stats or args.ref_dir or data):
        raise ValueError("FID needs a reference: pass --ref-stats STATS.npz or --ref-dir FOLDER")
    if needs_classifier(metrics) and not (args.classifier or data):
        raise ValueError("fd-emoji/acc need the dataset: pass --data SPEC or --classifier PATH")
    num = _image_count(args, info.num_classes)
    cfgs = axes.cfgs or [info.cfg]
    if info.num_classes == 0 and cfgs != [1.0]:
        if verbose:
            print("unconditional model: CFG does not apply, using cfg 1")
        cfgs = [1.0]
    if info.num_classes == 0 and "acc" in metrics and verbose:
        print("unconditional model: class accuracy does not apply, skipping acc")
    interval = tuple(args.interval) if args.interval is not None else tuple(info.cfg_interval)
    methods = axes.methods or [info.method]
    for method in methods:
        check_method(info.family, method)
    for cfg in cfgs:
        check_cfg(info.family, cfg, info.model_config)
    for scale in axes.class_scales or []:
        check_class_scale(info.family, scale)
    settings = sweep_settings(emas, cfgs, methods, axes.steps or [info.steps or DEFAULT_STEPS],
                              axes.class_scales or [1.0])  # fmt: skip
    for setting in settings:  # the ODE grid's checks (the model's t_eps, --shift) before anything is generated
        if setting.method in METHODS:
            sampling_times(setting.method, setting.steps, grid=args.time_grid, shift=args.shift, cfg=setting.cfg,
                           cfg_interval=interval, t_eps=info.t_eps)  # fmt: skip
    return EvalPlan(metrics, settings, sample_labels(num, info.num_classes), interval, data,
                    str(Path(models.file).resolve()), Path(args.out))  # fmt: skip


class SweepAxes(NamedTuple):
    """The comma lists of --cfg, --method, --steps and --class-scale (None: the model's default)."""

    cfgs: list[float] | None
    methods: list[str] | None
    steps: list[int] | None
    class_scales: list[float] | None = None



def _sweep_axes(args: argparse.Namespace) -> SweepAxes:
    """Parse the sweep's lists; unknown solvers, bad step counts and a --time-grid/--shift clash fail here,
    before any sampling."""
    axes = SweepAxes(cfgs=parse_list(args.cfg, "--cfg", float, "1.5,2.0") if args.cfg else None,
                     methods=parse_list(args.method, "--method") if args.method else None,
                     steps=parse_list(args.steps, "--steps", int, "10,20") if args.steps else None,
                     class_scales=parse_list(args.class_scale, "--class-scale", float, "1,1.5")
                     if args.class_scale else None)  # fmt: skip
    for method in axes.methods or []:
        if method not in SAMPLER_NAMES:
            raise ValueError(f"--method: unknown solver {method!r}; choose from {', '.join(SAMPLER_NAMES)}")
        if method in METHODS:
            resolve_grid(method, args.time_grid, args.shift)
    if axes.steps and min(axes.steps) < 1:
        raise ValueError(f"--steps must be >= 1, got {min(axes.steps)}")
    return axes


def _sampling_record(args, info, setting: Setting, plan: EvalPlan) -> dict:
    """Everything that determines a setting's images, the weights' sha256 first (a resumed run must match
    it; the time grid and the final step are named only when they differ from the public sampler's)."""
    record = {
        "model": plan.source, **plan.weights[setting.ema], "weights": setting.ema, "cfg": setting.cfg,
        "cfg_interval": list(plan.interval),
        "steps": setting.steps, "method": setting.method, "seed": args.seed, "num": plan.num,
        "chunk_size": args.chunk_size, "image_size": info.image_size, "num_classes": info.num_classes,
        "prediction": info.prediction, "noise_scale": info.noise_scale, "t_eps": info.t_eps,
        "precision": args.precision,
    }  # fmt: skip
    if info.family != "jit":  # named only for other families, so older folders still resume
        record["family"] = info.family
    if setting.class_scale != 1:  # likewise
        record["class_scale"] = setting.class_scale
    if setting.method not in METHODS:  # no ODE grid (pMF)
        return record
    grid, shift = resolve_grid(setting.method, args.time_grid, args.shift)
    if grid != "uniform":
        record.update(time_grid=grid, **({"shift": shift} if grid == "shifted" else {}))
    if args.final != "ode":
        record["final"] = args.final
    return record


def _generate(args, plan: EvalPlan, models: Source, dist_info) -> dict[str, dict]:
    """This rank's share of every setting's chunks; per setting the chunks made and the seconds taken."""
    done = {}
    for ema in dict.fromkeys(s.ema for s in plan.settings):
        model, info = models.load(ema, dist_info.device)  # another weight set of the same file: swapped in memory
        plan.weights[ema] = {"step": info.step, "weights_sha256": weights_digest(model.state_dict())}
        compile_for_sampling(model, dist_info.device, args.compile)
        for setting in [s for s in plan.settings if s.ema == ema]:
            samples_dir = plan.out_dir / setting.name / "samples"
            check_resume(samples_dir, _sampling_record(args, info, setting, plan), write=dist_info.is_main)
            start = time.perf_counter()
            made = generate_chunks(
                model, samples_dir, plan.labels, chunk_size=args.chunk_size, rank=dist_info.rank,
                world_size=dist_info.world_size, progress=setting.name if dist_info.is_main else None,
                image_size=info.image_size, seed=args.seed, cfg=setting.cfg, cfg_interval=plan.interval,
                steps=setting.steps, method=setting.method, noise_scale=info.noise_scale, t_eps=info.t_eps,
                prediction=info.prediction, grid=args.time_grid, shift=args.shift, final=args.final,
                batch_size=args.batch_size, device=dist_info.device, precision=args.precision, family=info.family,
                class_scale=setting.class_scale,
            )  # fmt: skip
            done[setting.name] = {"chunks": made, "seconds": round(time.perf_counter() - start, 2)}
    return done


def _inception_reference(args, net: InceptionFeatures, plan: EvalPlan, image_size: int) -> dict:
    """--ref-stats, else the Inception statistics of --ref-dir (or the model's training data), cached in --out."""
    if args.ref_stats:
        stats = load_stats(args.ref_stats)
        stats["source"] = str(Path(args.ref_stats).expanduser().resolve())
        return stats
    cache = plan.out_dir / "reference_inception.npz"
    return dataset_reference(net, args.ref_dir or plan.data, args.ref_split, image_size, cache,
                             need_features="pr" in plan.metrics, num_workers=args.num_workers)  # fmt: skip


def _scorer(args, plan: EvalPlan, info, weights_path: Path | None, device: torch.device) -> Scorer:
    """The Inception network and reference and/or the classifier the requested metrics need."""
    scorer = Scorer(plan.metrics, device=device)
    if plan.inception:
        scorer.inception = InceptionFeatures(weights_path, device, batch_size=args.metric_batch_size)
        scorer.reference = _inception_reference(args, scorer.inception, plan, info.image_size)
    if plan.classifier:
        from .classifier import ClassifierMetrics

        classifier = ClassifierMetrics.create(plan.data, info.image_size, classifier=args.classifier,
                                              reference_split=args.classifier_ref_split, device=device)  # fmt: skip
        names = classifier.config.class_names
        if info.num_classes and (len(names) != info.num_classes or (info.class_names and info.class_names != names)):
            raise ValueError(f"the classifier's classes ({len(names)}: {names[:3]}...) are not the model's "
                             f"({info.num_classes}): pass --classifier trained on the model's dataset")  # fmt: skip
        scorer.classifier = classifier
    return scorer


def _score(args, plan: EvalPlan, setting: Setting, scorer: Scorer, info, run: dict) -> dict:
    """Score one setting's samples (and write its ADM .npz when asked); returns its metrics.json record,
    with ``run``'s facts (processes, device, generation) before the scoring time."""
    samples_dir = plan.out_dir / setting.name / "samples"
    start = time.perf_counter()
    result = scorer.score(iter_chunks(samples_dir, plan.num, args.chunk_size), conditional=info.num_classes > 0)
    if args.adm_npz:
        h = info.image_size
        npz = write_adm_npz(plan.out_dir / setting.name / f"samples_{plan.num}x{h}x{h}x3.npz",
                            iter_chunks(samples_dir, plan.num, args.chunk_size), plan.num)  # fmt: skip
        print(f"wrote {npz}")
    classifier = scorer.classifier
    nfe = evaluations(info.family, setting.method, setting.steps, grid=args.time_grid, shift=args.shift,
                      cfg=setting.cfg, cfg_interval=plan.interval, t_eps=info.t_eps)  # fmt: skip
    return {
        "setting": setting.name, **setting.fields(), "num": plan.num, "metrics": result,
        "network_evaluations": nfe,
        "sampling": _sampling_record(args, info, setting, plan),
        "reference": None if scorer.reference is None else scorer.reference.get("source"),
        "classifier": None if classifier is None else str(classifier.folder),
        "classifier_reference_split": None if classifier is None else classifier.reference_split,
        **run, "metric_seconds": round(time.perf_counter() - start, 2),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip


def run_eval(args: argparse.Namespace) -> None:
    """``jit eval``: generate every setting's samples (sharded over torchrun ranks), then score them on rank 0."""
    metrics = parse_metrics(args.metrics)
    axes = _sweep_axes(args)
    weights_path = inception_weights(args.inception_weights) if needs_inception(metrics) else None
    _check_flags(args, metrics)
    dist_info = init_distributed(args.device, timeout=timedelta(hours=12))  # ranks can be unbalanced when resuming
    models = open_source(args.model_path)
    emas = [e.strip() for e in (args.ema or "").split(",") if e.strip()] or [models.default_weights]
    models.check(emas)
    info = models.info(emas[0])
    plan = _plan(args, metrics, axes, emas, models, info, verbose=dist_info.is_main)
    generation = _generate(args, plan, models, dist_info)
    barrier(dist_info)
    if not dist_info.is_main:
        cleanup(dist_info)
        return
    scorer = _scorer(args, plan, info, weights_path, dist_info.device)
    rows = []
    for setting in plan.settings:
        run = {"world_size": dist_info.world_size, "device": str(dist_info.device),
               "chunks_generated": generation[setting.name]["chunks"],  # by this run (rank 0's share under torchrun)
               "generation_seconds": generation[setting.name]["seconds"]}  # fmt: skip
        record = _score(args, plan, setting, scorer, info, run)
        save_json(plan.out_dir / setting.name / "metrics.json", record)
        rows.append(record)
        scores = ", ".join(f"{k} {format_value(v)}" for k, v in record["metrics"].items())
        print(f"{setting.name}: {scores or 'generated'}", flush=True)
    for path in write_sweep(plan.out_dir, rows):
        print(f"wrote {path}")
    cleanup(dist_info)
