"""The trainer (``jit train``, :mod:`jit_diffusion.cli.train`): one process or many under torchrun, with exact resume.

Every random draw of a step (time, noise, flip, label drop) is a function of (seed, step, position
in the global batch) (see :mod:`jit_diffusion.core.rng`), and the data order is a function of (seed, epoch), so a run
gives the same result on 1 or N processes and a resumed run continues bit-for-bit where it stopped.

The pieces live beside this file: the config (:mod:`.config`), the flags (:mod:`.flags`), data order
and draws (:mod:`.draws`), optimizer and schedule (:mod:`.optim`), checkpoint state (:mod:`.state`),
preview grids (:mod:`.preview`), the log (:mod:`.log`), early stops (:mod:`.health`) and preemption
signals (:mod:`.signals`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..core.device import use_bf16
from ..core.distributed import DistInfo, barrier, cleanup, init_distributed
from ..core.errors import UserError
from ..core.fileio import save_json
from ..core.parallel import apply_fsdp
from ..diffusion.ema import EMA
from ..formats.checkpoint import CKPT_DIR, LATEST, latest_checkpoint, writing_to
from ..models.pmf import DIFFERENCES
from .config import TrainConfig, build_network, compile_scope, compiles, model_config, validate
from .draws import Augment, KeyedStepSampler, PMFAugment, StepBatchSampler, default_workers, make_loader
from .flags import config_from_args
from .graphed_step import GraphedTrainStep, apply_update, micro_batch_backward
from .health import (
    STOP_BAD_IMAGES,
    STOP_MAX_MINUTES,
    BadImageLedger,
    RunHealth,
    default_bad_image_limit,
    out_of_memory_message,
    preempted,
)
from .init import describe_init, freeze, init_weights, recorded_origin
from .log import LogWindow, RunLog
from .lora import describe_lora, slim_state, start_lora, validate_lora
from .optim import build_optimizer, learning_rate, param_groups, set_learning_rate
from .perceptual import perceptual_terms
from .pmf_optim import build_pmf_optimizer, edm_ema_decays
from .preview import PreviewGrid
from .signals import Preemption
from .state import read_resume, restore_training_state, save_state, training_state

__all__ = [
    "StepBatchSampler", "TrainConfig", "Trainer", "TrainingDiverged", "config_from_args",
    "learning_rate", "model_config", "param_groups",
]  # fmt: skip


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class Trainer:
    """One training run; ``run()`` trains until the configured number of steps."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, dataset=None, overwrite: bool = False):
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = self.dist.device
        self.cfg = dataclasses.replace(cfg, compile=compiles(cfg, self.device))  # saved as what is done
        self.run_dir = Path(cfg.out)
        validate(cfg, self.dist.world_size)
        validate_lora(cfg)
        self.overwrite = check_run_folder(self.run_dir, resume, overwrite)
        barrier(self.dist)  # every rank has looked before rank 0 writes anything
        self.preemption = Preemption(cfg.preempt_signals)
        if cfg.fsdp and not self.dist.enabled:
            print("--fsdp: single process, running without sharding")
        if cfg.cuda_graph and self.device.type != "cuda" and self.dist.is_main:
            print(f"--cuda-graph: no graphs on {self.device.type}, running the same step eagerly")
        self.resume_from = latest_checkpoint(self.run_dir) if resume else None
        if resume and self.resume_from is None and self.dist.is_main:
            print(f"--resume: no checkpoint in {self.run_dir}; starting a new run")
        self._setup_data(dataset)
        self.objective = self.cfg.objective()
        if cfg.family == "pmf":  # the perceptual terms' files are read here, before any step
            self.objective.perceptual = perceptual_terms(cfg.lpips_weights, cfg.lpips_loss_weight,
                                                         cfg.convnext_weights, cfg.convnext_loss_weight, self.device)
            self.augment = PMFAugment(self.objective, seed=cfg.seed, global_batch=cfg.batch_size)
        else:
            self.augment = Augment(self.objective, seed=cfg.seed, null_label=self.num_classes)
        self.use_bf16 = use_bf16(self.device, cfg.precision)
        self.step, self.origin, self.lora = 0, None, None
        ckpt = read_resume(self.resume_from, self.cfg) if self.resume_from is not None else None
        self._setup_model(ckpt)
        if ckpt is not None:
            self.step = restore_training_state(ckpt, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                               sharded=self.sharded, dist=self.dist)  # fmt: skip
            del ckpt
            if self.dist.is_main:
                print(f"resumed from {self.resume_from} at step {self.step}")
        self.graphed = self._graphed_step() if self.cfg.cuda_graph else None
        self.preview = PreviewGrid(self.cfg, self.raw_model, self.ema, self.dist, self.sharded, self.run_dir)
        self.writer = None

    # -- setup ----------------------------------------------------------------------------

    def _setup_data(self, dataset) -> None:
        """The dataset, its classes, the batch layout and the run length."""
        cfg, world = self.cfg, self.dist.world_size
        image_size = model_config(cfg, 0).input_size  # validates --model/--img-size before touching data
        if dataset is None:
            from ..data.datasets import load_dataset

            dataset = load_dataset(cfg.data, image_size, split=cfg.data_split)
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.class_names = list(dataset.class_names)
        if cfg.family == "pmf" and self.num_classes == 0:
            raise UserError(f"--data {cfg.data}: pMF models train on labelled images (class subfolders)")
        if dataset.image_size != image_size:
            raise UserError(f"--data gives {dataset.image_size}px images but the model expects {image_size}px")
        self.sampler_args = dict(n=len(dataset), global_batch=cfg.batch_size, world=world, rank=self.dist.rank,
                                 accum=cfg.grad_accum, seed=cfg.seed)  # fmt: skip
        self.steps_per_epoch = len(dataset) // cfg.batch_size
        if self.steps_per_epoch == 0:  # also: a batch larger than the data
            raise UserError(f"--batch-size {cfg.batch_size} is larger than the dataset ({len(dataset)} images)")
        self.total_steps = cfg.steps if cfg.steps is not None else round(cfg.epochs * self.steps_per_epoch)
        self.warmup_steps = (cfg.warmup_steps if cfg.warmup_steps is not None
                             else round(cfg.warmup_epochs * self.steps_per_epoch))  # fmt: skip
        layout = StepBatchSampler(**self.sampler_args, start_step=0)
        self._first_position = layout.first_position  # micro-batch index -> first global position
        self._positions = torch.arange(layout.micro, device=self.device)  # (micro,)

    def _setup_model(self, ckpt: dict | None) -> None:
        """Model (resumed weights loaded before any wrapping), compile, DDP or FSDP2, EMAs, optimizer."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = build_network(cfg, self.num_classes).to(self.device)
        self.model.grad_checkpointing = cfg.grad_checkpointing
        if cfg.lora_rank:  # base from the source, adapters fresh or the checkpoint's
            recorded = recorded_origin(self.run_dir) if ckpt is not None else None
            self.origin, self.lora = start_lora(self.model, cfg, self.class_names, ckpt, recorded)
        elif ckpt is not None:
            self.model.load_state_dict(ckpt["model"], strict=True)  # full weights, before any sharding
            self.origin = recorded_origin(self.run_dir)
        elif cfg.init_from:
            self.origin = init_weights(self.model, cfg, self.class_names)  # the EMAs start at these weights
        frozen = freeze(self.model, cfg.freeze)  # before DDP/FSDP and the optimizer, which skip them
        if self.dist.is_main and ckpt is None and (self.origin or frozen):
            print(describe_init(self.origin, frozen))
            if self.lora:
                print(describe_lora(self.model, cfg, self.origin, self.num_classes))
        self.raw_model = self.model
        self.sharded = self.dist.enabled and cfg.fsdp
        if cfg.compile:
            self.model.compile_model(compile_scope(self.sharded))
        if cfg.family != "jit" and cfg.jvp_method in DIFFERENCES:  # the model's own finite-difference transforms
            self.model.jvp_transform = cfg.jvp_method
        self.train_model: nn.Module = self.model
        if self.sharded:  # each block, then the root; pMF's JVP then runs in its own pass without gradient
            self.train_model = apply_fsdp(self.model, None if cfg.family == "jit" else self.model.all_blocks())
            if cfg.family != "jit":
                self.model.jvp_transform = "separate"
        elif self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # --ema-half-lives: the decays follow the EDM rule, set before each update (train_step)
        self.ema_half_lives = {f"ema{i + 1}": kimg for i, kimg in enumerate(cfg.ema_half_lives)}
        # frozen weights (--freeze, LoRA's base) are their own average: the EMAs hold only what trains
        self.ema = EMA(self.model, cfg.ema_decays or [0.0] * len(self.ema_half_lives),
                       trainable_only=bool(self.lora or frozen))  # fmt: skip
        if cfg.optimizer == "muon":
            self.optimizer = build_pmf_optimizer(self.model, cfg.lr_value(), betas=(cfg.beta1, cfg.beta2))
        else:
            self.optimizer = build_optimizer(self.model, cfg, self.device, self.sharded)
        torch.manual_seed(cfg.seed * self.dist.world_size + self.dist.rank)  # dropout masks: per-rank stream

    def _graphed_step(self) -> GraphedTrainStep:
        """``--cuda-graph``: the step on static buffers, captured after a few eager steps (eager on a CPU)."""
        return GraphedTrainStep(model=self.train_model, raw_model=self.raw_model, objective=self.objective,
                                augment=self.augment, optimizer=self.optimizer, ema=self.ema,
                                positions=self._positions + self._first_position(0), use_bf16=self.use_bf16,
                                grad_clip=self.cfg.grad_clip)  # fmt: skip

    def _loader(self) -> Iterator:
        cfg = self.cfg
        sampler = KeyedStepSampler(**self.sampler_args, start_step=self.step)
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers(self.device)
        return make_loader(self.dataset, sampler, workers, self.device, seed=cfg.seed, strict=cfg.strict_data,
                           ignored_signals=tuple(self.preemption.signals))  # fmt: skip

    # -- checkpoints and pictures ---------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue exactly (full CPU tensors); under FSDP every rank must call this."""
        state = training_state(raw_model=self.raw_model, model=self.model, ema=self.ema, optimizer=self.optimizer,
                               sharded=self.sharded, dist=self.dist, step=self.step,
                               steps_per_epoch=self.steps_per_epoch, cfg=self.cfg,
                               class_names=self.class_names)  # fmt: skip
        return slim_state(state, self.lora) if self.lora else state

    def save(self) -> Path | None:
        """Write the checkpoint of the current step (collective; the path on rank 0). A full disk or a
        read-only folder is a one-line CheckpointWriteError on every rank; the last checkpoint stays."""
        previous = getattr(self, "last_ckpt", None)
        return save_state(self.state(), self.run_dir, self.step, self.cfg.keep_last, self.dist, previous)

    def sample_grid(self) -> Path | None:
        """Rank 0 writes ``samples/step_XXXXXXXX.png`` from EMA1 with fixed noise (a row per class)."""
        with writing_to(self.preview.folder, "a sample grid"):
            return self.preview.write(self.step, self.writer)

    # -- the loop -------------------------------------------------------------------------

    def train_step(self, micro_batches: list, lr: float) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches of (uint8 images, labels).

        Returns the detached mean loss on the device (no host synchronisation).
        """
        if self.graphed is not None:
            ((x_uint8, y),) = micro_batches
            return self.graphed(x_uint8, y, self.step, lr)  # copies the host batch into the graph's buffers
        set_learning_rate(self.optimizer, lr)
        accum = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for a, (x_uint8, y) in enumerate(micro_batches):
            x_uint8 = x_uint8.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            positions = self._positions + self._first_position(a)  # (micro,) positions in the global batch
            defer_sync = self.dist.enabled and not self.cfg.fsdp and a < accum - 1  # DDP: all-reduce on the last
            with self.train_model.no_sync() if defer_sync else contextlib.nullcontext():
                loss = micro_batch_backward(self.train_model, self.objective, self.augment, x_uint8, y, self.step,
                                            positions, self.use_bf16, accum)  # fmt: skip
            loss_sum += loss.detach() / accum
        if self.ema_half_lives:
            self.ema.decays = edm_ema_decays(self.step, self.cfg.batch_size, self.ema_half_lives)
        apply_update(self.raw_model, self.optimizer, self.ema, self.cfg.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def run(self) -> dict:
        """Train from the current step to the last one, or to a clean early stop (a preemption signal,
        ``--max-minutes``, too many bad images: checkpoint first). Returns the last log values, plus
        ``preempted`` (the signal) when a signal stopped the run."""
        self._open_run()
        self.preemption.install()
        try:
            batches = self._loader()
            self.train_model.train()
            while self.step < self.total_steps:
                lr = learning_rate(self.step, self.cfg, self.warmup_steps, self.total_steps)
                micro_batches = self._next_micro_batches(batches)
                try:
                    loss = self.train_step(micro_batches, lr)
                except torch.OutOfMemoryError:
                    raise UserError(out_of_memory_message(self.cfg, self.dist.world_size, self.raw_model.config
                                                          .input_size, self.step, self.device)) from None  # fmt: skip
                self.step += 1
                self.window.add(loss)
                self.log.bar.update(1)
                if self._after_step(lr):
                    break
        finally:
            self.preemption.restore()
            self.log.close()
        return self._finish()

    def _next_micro_batches(self, batches: Iterator) -> list:
        """This rank's micro-batches of the step, noting the images that were replaced."""
        micro_batches = []
        for _ in range(self.cfg.grad_accum):
            images, labels, bad = next(batches)
            self.ledger.note(bad)
            micro_batches.append((images, labels))
        return micro_batches

    def _finish(self) -> dict:
        """The closing line; an error if too many images were bad (after the checkpoint)."""
        bad = self.ledger.count
        self.summary["bad_images"] = bad
        if self.stop_reason == STOP_BAD_IMAGES:
            raise UserError(f"{bad} images failed to decode, more than --max-bad-images {self.ledger.limit}; "
                            f"stopped at step {self.step} after saving {self.last_ckpt or 'a checkpoint'}. "
                            f"`jit data check {self.cfg.data}` lists them")  # fmt: skip
        if preempted(self.stop_reason):
            self.summary["preempted"] = self.stop_reason
        elif self.dist.is_main:
            replaced = f"; {bad} bad image(s) replaced (named above)" if bad else ""
            print(f"done: {self.step} steps; checkpoints in {self.run_dir / 'checkpoints'}{replaced}")
        return self.summary

    def _open_run(self) -> None:
        """Rank 0 writes config.json and opens TensorBoard; every rank starts its log window."""
        cfg, info = self.cfg, self.dist
        if info.is_main:
            if self.overwrite:
                remove_run(self.run_dir)
            with writing_to(self.run_dir, "config.json"):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_json(self.run_dir / "config.json", {**dataclasses.asdict(cfg), "resolved": self._resolved()})
            for stale in (self.run_dir / "checkpoints").glob("*.tmp*"):
                stale.unlink(missing_ok=True)  # left by a kill during a write
        self.log = RunLog(self.run_dir, info, self.total_steps, self.step)
        self.writer = self.log.writer
        self.window = LogWindow(self.device, cfg.batch_size)
        limit = cfg.max_bad_images if cfg.max_bad_images is not None else default_bad_image_limit(len(self.dataset))
        self.ledger = BadImageLedger(self.dataset, limit)
        self.health = RunHealth(info, self.window, self.preemption, self.ledger, cfg.max_minutes)
        if info.is_main:  # for messages: what a failure would leave as the latest
            self.last_ckpt = self.resume_from or latest_checkpoint(self.run_dir, verify=False)
        else:
            self.last_ckpt = None
        self.summary: dict = {}
        self.stop_reason: str | None = None

    def _resolved(self) -> dict:
        """The values config.json records beside the flags: what the defaults resolved to."""
        return {
            "lr": self.cfg.lr_value(), "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.dist.world_size,
            "num_classes": self.num_classes, "class_names": self.class_names,
            "model_config": dataclasses.asdict(self.raw_model.config),
            "params": self.raw_model.num_params(), "device": str(self.device), "model_family": self.cfg.family,
            "init_from": self.origin, "lora": self.lora,
        }  # fmt: skip

    def _after_step(self, lr: float) -> bool:
        """Checks, log line, checkpoint and sample grid due after a step; True when the run stops here."""
        cfg = self.cfg
        final = self.step == self.total_steps
        at_ckpt = final or (cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0)  # 0: only at the end
        health = self.health.poll(final or at_ckpt or self.step % cfg.log_every == 0)
        if health.diverged:
            raise TrainingDiverged(f"loss became NaN/inf at or before step {self.step}; stopped without saving. "
                                   f"Last good checkpoint: {self.last_ckpt or 'none'}")  # fmt: skip
        for record in health.new_bad:
            self.log.say(self.ledger.describe(record))
        if not final and health.stop is not None:
            self.stop_reason, final = health.stop, True
            self._announce_stop()
        at_log = self.step % cfg.log_every == 0 or final
        at_ckpt = at_ckpt or final
        if at_log:
            self._log_line(lr)
        if at_ckpt:
            self.last_ckpt = self.save() or self.last_ckpt
        if preempted(self.stop_reason):  # save only, then exit
            self.log.say(f"{self.stop_reason}: saved {self.last_ckpt or 'the checkpoint'} at step {self.step}; "
                         f"stopping (continue with --resume)")  # fmt: skip
            return True
        at_sample = bool(cfg.sample_every) and (self.step % cfg.sample_every == 0 or final)
        if at_sample:
            self.sample_grid()
            barrier(self.dist)
        if at_ckpt or at_sample:
            self.window.restart_clock()
        return final

    def _announce_stop(self) -> None:
        if self.stop_reason == STOP_MAX_MINUTES:
            self.log.say(f"--max-minutes {self.cfg.max_minutes} reached at step {self.step}; saving and stopping")
        elif self.stop_reason == STOP_BAD_IMAGES:
            self.log.say(f"more than --max-bad-images {self.ledger.limit} images failed to decode; saving and stopping")
        else:
            self.log.say(f"{self.stop_reason} received during step {self.step}: saving a checkpoint and stopping")

    def _log_line(self, lr: float) -> None:
        values = self.window.close(self.dist)
        self.log.bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['img_per_sec']:.1f}", lr=f"{lr:.2e}")
        self.log.scalars(self.step, loss=values["loss"], lr=lr, img_per_sec=values["img_per_sec"],
                         bad_images=self.ledger.count)  # fmt: skip
        self.summary = {"step": self.step, **values}

    def close(self) -> None:
        cleanup(self.dist)


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Whether the run must first remove an old run from ``run_dir``; a one-line UserError when the folder
    holds a run (config.json or checkpoints/) and neither ``--resume`` nor ``--overwrite`` was given."""
    if resume and overwrite:
        raise UserError("give --resume (continue the run) or --overwrite (start afresh), not both")
    holds_run = (run_dir / "config.json").exists() or (run_dir / CKPT_DIR).exists()
    if holds_run and not (resume or overwrite):
        raise UserError(f"{run_dir} holds a run: pass --resume or another --out (or --overwrite)")
    return holds_run and overwrite


def remove_run(run_dir: Path) -> None:
    """``--overwrite``: remove what a run wrote into ``run_dir`` (config.json, the checkpoints and their
    ``latest`` pointer, TensorBoard events, sample grids) and nothing else; emptied folders go too."""
    patterns = {".": ["config.json"], CKPT_DIR: ["step_*.pt", LATEST, ".*.tmp*"], "tb": ["events.out.tfevents.*"],
                "samples": ["step_*.png", ".step_*.png.tmp*"]}  # fmt: skip
    for sub, names in patterns.items():
        folder = run_dir / sub
        for name in names:
            for path in folder.glob(name):
                if path.is_file() or path.is_symlink():
                    path.unlink()
        if sub != "." and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
