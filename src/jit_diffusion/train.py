"""The trainer: ``jit train``, one process or many under torchrun, with exact resume.

Every random draw of a step (time, noise, flip, label drop) is a function of (seed, step, position
in the global batch) (see :mod:`rng`), and the data order is a function of (seed, epoch), so a run
gives the same result on 1 or N processes and a resumed run continues bit-for-bit where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import rng
from .checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint, save_checkpoint
from .config import JiTConfig, preset_config
from .device import autocast_context, check_precision, use_bf16
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from .ema import EMA
from .errors import UserError
from .fileio import save_json
from .flow import SPACES, FlowMatching
from .images import make_grid, save_grid, to_uint8
from .model import JiT
from .parallel import apply_fsdp, full_state_dict, full_tensor, load_optimizer_state, optimizer_state
from .sampling import image_noise, sample


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` in the run folder)."""

    # model
    model: str = "JiT-Ti/4"
    img_size: int | None = None  # default: the preset's input size
    bottleneck_dim: int | None = None  # default: the preset's; 0 = no bottleneck
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    # data
    data: str = "emoji"
    data_split: str = "train"
    num_workers: int | None = None  # default: 0 on CPU, 4 on CUDA
    # objective
    prediction: str = "x"
    loss: str = "v"
    p_mean: float = -0.8
    p_std: float = 0.8
    noise_scale: float = 1.0
    t_eps: float = 0.05
    label_drop: float = 0.1
    # optimisation
    batch_size: int = 64  # global, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float | None = None  # absolute; default blr * batch_size / 256
    blr: float = 5e-5
    min_lr: float = 0.0
    schedule: str = "constant"  # or cosine
    warmup_epochs: float = 5.0
    warmup_steps: int | None = None  # overrides warmup_epochs
    epochs: float | None = None
    steps: int | None = None  # overrides epochs
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 0.0  # max global grad norm, 0 = off
    ema_decays: list[float] = field(default_factory=lambda: [0.9999, 0.9996])
    # run control
    seed: int = 0
    out: str = "runs/jit"
    ckpt_every: int = 1000
    keep_last: int = 3
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    log_every: int = 20
    sample_every: int = 1000  # 0 = never
    sample_per_class: int = 8
    sample_cfg: float = 1.0
    sample_interval: list[float] = field(default_factory=lambda: [0.1, 1.0])
    sample_steps: int = 50
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False
    fsdp: bool = False
    grad_checkpointing: bool = False

    def lr_value(self) -> float:
        """Peak learning rate: ``lr`` or ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256


# fields that define the trajectory: a resumed run must keep them
_TRAJECTORY = {
    "model", "img_size", "bottleneck_dim", "attn_drop", "proj_drop", "data", "data_split", "prediction",
    "loss", "p_mean", "p_std", "noise_scale", "t_eps", "label_drop", "batch_size", "lr", "blr", "min_lr",
    "schedule", "warmup_epochs", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "ema_decays",
    "seed",
}  # fmt: skip


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------------------------
# data order
# --------------------------------------------------------------------------------------------


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches of indices from global step ``start_step`` on, forever.

    Epoch e is ``randperm(n)`` seeded by (seed, e); global step s of the epoch takes the slice
    [s*B, (s+1)*B) (the tail shorter than B is dropped). Rank r owns positions [r*B/W, (r+1)*B/W)
    of that slice, split into ``accum`` consecutive micro-batches.
    """

    def __init__(self, n: int, global_batch: int, world: int, rank: int, accum: int, seed: int, start_step: int):
        self.n, self.B, self.world, self.rank, self.accum = n, global_batch, world, rank, accum
        self.seed, self.start_step = seed, start_step
        self.steps_per_epoch = n // global_batch
        self.local = global_batch // world
        self.micro = self.local // accum

    def epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self.epoch_order(epoch)
            for s in range(within, self.steps_per_epoch):
                lo = s * self.B + self.rank * self.local
                for a in range(self.accum):
                    yield order[lo + a * self.micro : lo + (a + 1) * self.micro].tolist()
            step = (epoch + 1) * self.steps_per_epoch


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def learning_rate(step: int, cfg: TrainConfig, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up per iteration (lr * step / warmup), then constant or cosine to ``min_lr``."""
    peak = cfg.lr_value()
    if step < warmup_steps:
        return peak * step / warmup_steps
    if cfg.schedule == "constant":
        return peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, norm weights and 1-d tensors are never decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def model_config(cfg: TrainConfig, num_classes: int) -> JiTConfig:
    """The preset's config with the run's overrides; errors name the flag."""
    overrides = dict(num_classes=num_classes, attn_drop=cfg.attn_drop, proj_drop=cfg.proj_drop)
    if cfg.img_size is not None:
        overrides["input_size"] = cfg.img_size
    if cfg.bottleneck_dim is not None:
        overrides["bottleneck_dim"] = cfg.bottleneck_dim or None
    try:
        return preset_config(cfg.model, **overrides)
    except ValueError as err:
        msg = str(err)
        if "image size" in msg:
            msg = f"--img-size: {msg} of {cfg.model}"
        elif "unknown model preset" in msg:
            msg = f"--model: {msg}"
        raise UserError(msg) from None


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Augment:
    """Per-sample draws of a step from the counter-based RNG, on the batch's device."""

    def __init__(self, cfg: TrainConfig, null_label: int):
        self.cfg = cfg
        self.null_label = null_label

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor, step: int, positions: torch.Tensor):
        """uint8 images -> flipped [-1, 1] fp32, dropped labels, t (B,), unit noise (B, C, H, W)."""
        cfg = self.cfg
        x = x_uint8.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]
        flip = rng.uniform(cfg.seed, step, rng.STREAM_FLIP, positions)[:, 0] < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if cfg.label_drop > 0:
            drop = rng.uniform(cfg.seed, step, rng.STREAM_LABEL_DROP, positions)[:, 0] < cfg.label_drop
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
        n = rng.normal(cfg.seed, step, rng.STREAM_TIME, positions, 1)[:, 0]
        t = torch.sigmoid(n * cfg.p_std + cfg.p_mean)  # logit-normal
        noise = rng.normal(cfg.seed, step, rng.STREAM_NOISE, positions, x[0].numel()).view_as(x)
        return x, y, t, noise


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


class Trainer:
    """One training run; ``run()`` trains until the configured number of steps."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, dataset=None):
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = self.dist.device
        self.run_dir = Path(cfg.out)
        self._validate()
        self.resume_from = latest_checkpoint(self.run_dir) if resume else None
        if resume and self.resume_from is None and self.dist.is_main:
            print(f"--resume: no checkpoint in {self.run_dir}; starting a new run")

        from .data import load_dataset

        image_size = model_config(cfg, 0).input_size  # validates --model/--img-size before touching data
        self.dataset = dataset if dataset is not None else load_dataset(cfg.data, image_size, split=cfg.data_split)
        self.num_classes = self.dataset.num_classes
        self.class_names = list(self.dataset.class_names)
        if self.dataset.image_size != image_size:
            raise UserError(f"--data gives {self.dataset.image_size}px images but the model expects {image_size}px")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = JiT(**dataclasses.asdict(model_config(cfg, self.num_classes))).to(self.device)
        self.model.grad_checkpointing = cfg.grad_checkpointing
        world, accum = self.dist.world_size, cfg.grad_accum
        self.sampler_args = dict(n=len(self.dataset), global_batch=cfg.batch_size, world=world, rank=self.dist.rank,
                                 accum=accum, seed=cfg.seed)  # fmt: skip
        self.steps_per_epoch = len(self.dataset) // cfg.batch_size
        if self.steps_per_epoch == 0:  # also: a batch larger than the data
            raise UserError(f"--batch-size {cfg.batch_size} is larger than the dataset ({len(self.dataset)} images)")
        self.total_steps = cfg.steps if cfg.steps is not None else round(cfg.epochs * self.steps_per_epoch)
        self.warmup_steps = (cfg.warmup_steps if cfg.warmup_steps is not None
                             else round(cfg.warmup_epochs * self.steps_per_epoch))  # fmt: skip
        self.objective = FlowMatching(prediction=cfg.prediction, loss=cfg.loss, p_mean=cfg.p_mean, p_std=cfg.p_std,
                                      t_eps=cfg.t_eps, noise_scale=cfg.noise_scale, label_drop_prob=0.0)
        self.augment = Augment(cfg, null_label=self.num_classes)
        self._micro = cfg.batch_size // (world * accum)  # images per micro-batch on this rank
        self._local_offset = self.dist.rank * (cfg.batch_size // world)  # this rank's first global position
        self._arange = torch.arange(self._micro, device=self.device)
        self.use_bf16 = use_bf16(self.device, cfg.precision)
        self.step = 0
        ckpt = self._read_resume() if self.resume_from is not None else None
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"], strict=True)  # full weights, before any sharding
        # wrap: compile per block, then DDP or FSDP2; EMAs and optimizer see the final parameters
        self.raw_model = self.model
        if cfg.compile and self.device.type == "cuda":
            self.model.compile_blocks()
        self.sharded = self.dist.enabled and cfg.fsdp
        self.train_model: nn.Module = self.model
        if self.sharded:
            self.train_model = apply_fsdp(self.model)
        elif self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.ema = EMA(self.model, cfg.ema_decays)
        fast = {"fused": True} if self.device.type == "cuda" and not self.sharded else {"foreach": True}
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr_value(),
                                           betas=(cfg.beta1, cfg.beta2), **fast)  # fmt: skip
        torch.manual_seed(cfg.seed * world + self.dist.rank)  # dropout masks: per-rank stream
        if ckpt is not None:
            self._restore(ckpt)
            del ckpt
        self._sampling_model: JiT | None = None
        self.writer = None

    # -- setup ----------------------------------------------------------------------------

    def _validate(self) -> None:
        cfg, world = self.cfg, self.dist.world_size
        if cfg.prediction not in SPACES or cfg.loss not in SPACES:
            raise UserError(f"--prediction/--loss must be in {SPACES}")
        try:
            check_precision(cfg.precision)
        except ValueError as err:
            raise UserError(str(err)) from None
        if cfg.schedule not in ("constant", "cosine"):
            raise UserError(f"--schedule must be constant or cosine, got {cfg.schedule!r}")
        if cfg.steps is None and cfg.epochs is None:
            raise UserError("give --steps or --epochs")
        if cfg.batch_size % (world * cfg.grad_accum):
            raise UserError(f"--batch-size {cfg.batch_size} must be divisible by processes x --grad-accum "
                            f"({world} x {cfg.grad_accum})")  # fmt: skip
        if cfg.fsdp and not self.dist.enabled:
            print("--fsdp: single process, running without sharding")

    def _read_resume(self) -> dict:
        path = self.resume_from
        ckpt = read_checkpoint(path, map_location="cpu")
        saved = ckpt["config"]
        changed = {k: (saved.get(k), getattr(self.cfg, k)) for k in _TRAJECTORY if saved.get(k) != getattr(self.cfg, k)}
        if changed:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(changed.items()))
            raise UserError(f"--resume: {path} was trained with other settings ({detail})")
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        """EMAs, optimizer, step and RNG from a checkpoint (model weights are loaded before wrapping)."""
        self.ema.load_state_dict(ckpt["ema"])
        load_optimizer_state(self.model, self.optimizer, ckpt["optimizer"], self.sharded)
        self.step = int(ckpt["step"])
        states = ckpt.get("rng", [])
        if len(states) == self.dist.world_size:
            _set_rng_state(states[self.dist.rank], self.device)
        elif self.dist.is_main:
            print(f"--resume: {len(states)} saved RNG states for {self.dist.world_size} processes; dropout masks "
                  f"will differ from an uninterrupted run (all other draws do not)")  # fmt: skip
        if self.dist.is_main:
            print(f"resumed from {self.resume_from} at step {self.step}")

    def _loader(self) -> Iterator:
        cfg = self.cfg
        sampler = StepBatchSampler(**self.sampler_args, start_step=self.step)
        workers = cfg.num_workers if cfg.num_workers is not None else (4 if self.device.type == "cuda" else 0)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=workers, pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        )  # fmt: skip
        return iter(loader)

    # -- checkpoints and pictures ---------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue exactly: model, EMAs, optimizer, step, config, RNG of every rank.

        Tensors are full (unsharded) and on the CPU; under FSDP every rank must call this.
        """
        rng_states = all_gather_objects(_rng_state(self.device), self.dist)
        return {
            "model": full_state_dict(self.raw_model),
            "ema": {name: {k: full_tensor(v).cpu() for k, v in sd.items()}
                    for name, sd in self.ema.state_dict().items()},  # fmt: skip
            "optimizer": optimizer_state(self.model, self.optimizer, self.sharded),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "data_position": {"epoch": self.step // self.steps_per_epoch, "batch": self.step % self.steps_per_epoch},
            "rng": [{k: v.cpu() for k, v in s.items()} for s in rng_states],
            "config": dataclasses.asdict(self.cfg),
            "model_config": dataclasses.asdict(self.raw_model.config),
            "class_names": self.class_names,
            "world_size": self.dist.world_size,
        }

    def save(self) -> Path | None:
        state = self.state()  # collective: every rank takes part
        path = None
        if self.dist.is_main:
            path = save_checkpoint(state, self.run_dir, self.step, keep_last=self.cfg.keep_last)
        barrier(self.dist)
        return path

    def _ema_model(self, name: str):
        """A context giving a model that holds EMA ``name`` (rank 0 only; collective under FSDP)."""
        if not self.sharded:
            return self.ema.applied(self.raw_model, name) if self.dist.is_main else None
        weights = {k: full_tensor(v) for k, v in self.ema.weights(name).items()}  # all-gather on every rank
        if not self.dist.is_main:
            return None
        if self._sampling_model is None:
            self._sampling_model = JiT(**dataclasses.asdict(self.raw_model.config)).to(self.device)
        self._sampling_model.load_state_dict(weights, strict=True)
        return contextlib.nullcontext(self._sampling_model)

    def sample_grid(self) -> Path | None:
        """Rank 0 writes ``samples/step_XXXXXXXX.png`` from EMA1 with fixed noise (a row per class)."""
        cfg = self.cfg
        ema_name = self.ema.names[0] if self.ema.names else "raw"
        context = self._ema_model(ema_name)
        if context is None:
            return None
        classes = list(range(min(self.num_classes, 16))) if self.num_classes else [0]
        per_class = cfg.sample_per_class if self.num_classes else 64
        labels = torch.tensor([c for c in classes for _ in range(per_class)], device=self.device)
        size = self.raw_model.config.input_size
        noise = image_noise(range(len(labels)), (3, size, size), seed=1234).to(self.device)
        guidance = cfg.sample_cfg if self.num_classes else 1.0
        with context as model, autocast_context(self.device, cfg.precision):
            was_training = model.training
            model.eval()
            images = sample(model, noise, labels, steps=cfg.sample_steps, cfg=guidance,
                            cfg_interval=cfg.sample_interval, noise_scale=cfg.noise_scale, t_eps=cfg.t_eps,
                            prediction=cfg.prediction)  # fmt: skip
            model.train(was_training)
        uint8 = to_uint8(images)
        path = save_grid(uint8, self.run_dir / "samples" / f"step_{self.step:08d}.png", nrow=per_class,
                         upscale=max(1, 64 // size))  # fmt: skip
        if self.writer is not None:
            self.writer.add_image("samples/ema", make_grid(uint8, per_class), self.step, dataformats="HWC")
        return path

    # -- the loop -------------------------------------------------------------------------

    def train_step(self, micro_batches: list, lr: float) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches of (uint8 images, labels).

        Returns the detached mean loss on the device (no host synchronisation).
        """
        cfg, info = self.cfg, self.dist
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for a, (x_uint8, y) in enumerate(micro_batches):
            x_uint8 = x_uint8.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            positions = self._arange + (self._local_offset + a * self._micro)
            x, y, t, noise = self.augment(x_uint8, y, self.step, positions)
            defer_sync = info.enabled and not cfg.fsdp and a < accum - 1  # DDP: all-reduce on the last only
            with self.train_model.no_sync() if defer_sync else contextlib.nullcontext():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                    loss = self.objective(self.train_model, x, y, t=t, noise=noise, label_dropout=False)
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.raw_model)
        return loss_sum

    def run(self) -> dict:
        cfg, info = self.cfg, self.dist
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_json(self.run_dir / "config.json", {
                **dataclasses.asdict(cfg), "resolved": {
                    "lr": cfg.lr_value(), "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                    "steps_per_epoch": self.steps_per_epoch, "world_size": info.world_size,
                    "num_classes": self.num_classes, "class_names": self.class_names,
                    "model_config": dataclasses.asdict(self.raw_model.config),
                    "params": self.raw_model.num_params(), "device": str(self.device),
                },
            })  # fmt: skip
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
            for stale in (self.run_dir / "checkpoints").glob("*.tmp*"):
                stale.unlink(missing_ok=True)  # left by a kill during a write
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, disable=not info.is_main, unit="step",
                   dynamic_ncols=True, file=sys.stdout)  # fmt: skip
        batches = self._loader()
        loss_sum = torch.zeros((), device=self.device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        last_ckpt = latest_checkpoint(self.run_dir) if info.is_main else None
        self.train_model.train()
        summary = {}
        run_start = time.perf_counter()
        try:
            while self.step < self.total_steps:
                lr = learning_rate(self.step, cfg, self.warmup_steps, self.total_steps)
                loss = self.train_step([next(batches) for _ in range(cfg.grad_accum)], lr)
                loss_sum += loss
                nonfinite |= ~torch.isfinite(loss)
                self.step += 1
                window_steps += 1
                bar.update(1)

                final = self.step == self.total_steps
                at_log = self.step % cfg.log_every == 0 or final
                if at_log and cfg.max_minutes and not final:
                    over = time.perf_counter() - run_start > 60 * cfg.max_minutes
                    final = bool(broadcast_object(over, info))  # every rank stops at the same step
                    if final and info.is_main:
                        print(f"\n--max-minutes {cfg.max_minutes} reached at step {self.step}; saving and stopping")
                at_ckpt = self.step % cfg.ckpt_every == 0 or final
                if at_log or at_ckpt:
                    if bool(all_reduce_mean(nonfinite.float(), info) > 0):
                        raise TrainingDiverged(
                            f"loss became NaN/inf at or before step {self.step}; stopped without saving. "
                            f"Last good checkpoint: {last_ckpt or 'none'}"
                        )
                if at_log:
                    mean_loss = (all_reduce_mean(loss_sum, info) / window_steps).item()
                    elapsed = time.perf_counter() - window_start
                    img_s = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{img_s:.1f}", lr=f"{lr:.2e}")
                    if self.writer is not None:
                        self.writer.add_scalar("train/loss", mean_loss, self.step)
                        self.writer.add_scalar("train/lr", lr, self.step)
                        self.writer.add_scalar("train/img_per_sec", img_s, self.step)
                    summary = {"step": self.step, "loss": mean_loss, "img_per_sec": img_s}
                    loss_sum.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                if at_ckpt:
                    path = self.save()
                    last_ckpt = path or last_ckpt
                if cfg.sample_every and (self.step % cfg.sample_every == 0 or final):
                    self.sample_grid()
                    barrier(info)
                if at_ckpt or cfg.sample_every and self.step % cfg.sample_every == 0:
                    window_start = time.perf_counter()  # keep img/s about training only
                if final:
                    break
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        if info.is_main:
            print(f"done: {self.step} steps; checkpoints in {self.run_dir / 'checkpoints'}")
        return summary

    def close(self) -> None:
        cleanup(self.dist)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


# flag -> (TrainConfig field, type, help)
_FLAGS = [
    ("--model", "model", str, "model preset, e.g. JiT-Ti/4, JiT-S/8, JiT-B/16 (see `jit presets`)"),
    ("--img-size", "img_size", int, "image size in pixels (default: the preset's)"),
    ("--bottleneck", "bottleneck_dim", int, "patch-embedding bottleneck width (default: preset's; 0 = none)"),
    ("--attn-drop", "attn_drop", float, "attention dropout in the middle half of the blocks"),
    ("--proj-drop", "proj_drop", float, "projection/FFN dropout in the middle half of the blocks"),
    ("--data", "data", str, "'emoji' (built-in), an image folder (class subfolders or flat), or a cache folder"),
    ("--data-split", "data_split", str, "dataset split to train on (emoji: train, heldout, all)"),
    ("--num-workers", "num_workers", int, "data loader workers per process (default 0 on CPU, 4 on CUDA)"),
    ("--prediction", "prediction", str, "network output space: x (default), eps or v"),
    ("--loss", "loss", str, "loss space: v (default), x or eps"),
    ("--p-mean", "p_mean", float, "logit-normal t: mean (default -0.8)"),
    ("--p-std", "p_std", float, "logit-normal t: std (default 0.8)"),
    ("--noise-scale", "noise_scale", float, "noise std (1.0 at 256 px, 2.0 at 512 px in the paper)"),
    ("--t-eps", "t_eps", float, "clamp for divisions by (1 - t) (default 0.05)"),
    ("--label-drop", "label_drop", float, "probability of dropping a label to the null class (default 0.1)"),
    ("--batch-size", "batch_size", int, "global batch size over all processes (default 64)"),
    ("--grad-accum", "grad_accum", int, "gradient accumulation steps (default 1)"),
    ("--lr", "lr", float, "absolute learning rate (default: blr * batch / 256)"),
    ("--blr", "blr", float, "base learning rate per 256 images (default 5e-5)"),
    ("--min-lr", "min_lr", float, "final learning rate of the cosine schedule"),
    ("--schedule", "schedule", str, "constant (default) or cosine after warm-up"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warm-up length in epochs (default 5)"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up length in steps (overrides --warmup-epochs)"),
    ("--epochs", "epochs", float, "training length in epochs"),
    ("--steps", "steps", int, "training length in optimizer steps (overrides --epochs)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay on matrices (default 0)"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm (default 0 = off)"),
    ("--ema", "ema_decays", _floats, "comma-separated EMA decays (default 0.9999,0.9996)"),
    ("--seed", "seed", int, "global seed (default 0)"),
    ("--ckpt-every", "ckpt_every", int, "checkpoint every N steps (default 1000; always at the end)"),
    ("--max-minutes", "max_minutes", float, "stop cleanly (checkpoint + samples) after this many minutes"),
    ("--keep-last", "keep_last", int, "checkpoints to keep (default 3)"),
    ("--log-every", "log_every", int, "log every N steps (default 20)"),
    ("--sample-every", "sample_every", int, "write an EMA sample grid every N steps (default 1000, 0 = never)"),
    ("--sample-per-class", "sample_per_class", int, "images per class in the sample grids (default 8)"),
    ("--sample-cfg", "sample_cfg", float, "guidance weight of the sample grids (and the model's default)"),
    ("--sample-steps", "sample_steps", int, "Heun steps of the sample grids (default 50)"),
    ("--device", "device", str, "auto (default), cpu, cuda"),
    ("--precision", "precision", str, "auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 or fp32"),
]


def add_cli(sub) -> None:
    p = sub.add_parser(
        "train", help="train a JiT model (one process, or many under torchrun)",
        description="Train JiT on the built-in emoji data or an image folder. Run with torchrun for several "
                    "processes/GPUs/nodes. The run folder gets config.json, checkpoints/, tb/ and samples/.",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="run folder (default runs/jit)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--config", default=None, help="start from this JSON config (flags given override it)")
    for flag, name, typ, help_text in _FLAGS:
        p.add_argument(flag, dest=name, type=typ, default=None, help=help_text)
    p.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                   help="torch.compile each block (CUDA)")
    p.add_argument("--fsdp", dest="fsdp", action="store_const", const=True, default=None,
                   help="shard parameters with FSDP2 under torchrun")
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", action="store_const", const=True, default=None,
                   help="recompute block activations in the backward pass (saves memory)")
    p.add_argument("--sample-interval", dest="sample_interval", type=_floats, default=None,
                   help="CFG interval of the sample grids, e.g. 0.1,1.0")
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """Resolve the config: defaults < saved run config (on --resume) or --config file < explicit flags."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    explicit = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.out is not None:
        explicit["out"] = args.out
    base: dict = {}
    if args.config:
        base = json.loads(Path(args.config).read_text())
    out = Path(explicit.get("out", base.get("out", TrainConfig.out)))
    if args.resume and (out / "config.json").is_file() and list_checkpoints(out):
        base = json.loads((out / "config.json").read_text())
    base = {k: v for k, v in base.items() if k in names}
    cfg = TrainConfig(**{**base, **explicit})
    if cfg.steps is None and cfg.epochs is None:
        cfg.steps = 1000
    return cfg, bool(args.resume)


def run_train(args: argparse.Namespace) -> int:
    cfg, resume = config_from_args(args)
    trainer = Trainer(cfg, resume=resume)
    try:
        trainer.run()
    finally:
        trainer.close()
    return 0


