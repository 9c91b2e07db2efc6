"""What defines a training run: :class:`TrainConfig` (saved as the run folder's ``config.json``),
the model it builds and the checks made before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.device import check_precision
from ..core.errors import UserError, check_count
from ..diffusion.flow import SPACES, FlowMatching
from ..diffusion.sampling import METHODS, check_interval, sampling_times
from ..models.config import JiTConfig, preset_config
from .signals import DEFAULT_SIGNALS, parse_signals

_OBJECTIVE = FlowMatching()  # the objective's defaults are the run's defaults


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
    strict_data: bool = False  # stop at the first image that does not decode (default: replace it)
    max_bad_images: int | None = None  # stop when more distinct images fail; default 0.1% of the data, >= 10
    # objective (the fields of flow.FlowMatching; label_drop is its label_drop_prob)
    prediction: str = _OBJECTIVE.prediction
    loss: str = _OBJECTIVE.loss
    p_mean: float = _OBJECTIVE.p_mean
    p_std: float = _OBJECTIVE.p_std
    noise_scale: float = _OBJECTIVE.noise_scale
    t_eps: float = _OBJECTIVE.t_eps
    label_drop: float = _OBJECTIVE.label_drop_prob
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
    preempt_signals: str = DEFAULT_SIGNALS  # save and stop on these ("none": never)
    requeue_exit_code: int | None = None  # exit code after such a stop (default 0)
    log_every: int = 20
    sample_every: int = 1000  # 0 = never
    sample_per_class: int = 8
    sample_cfg: float = 1.0
    sample_interval: list[float] = field(default_factory=lambda: [0.1, 1.0])
    sample_steps: int = 50
    sample_method: str = "heun"  # the grids' ODE solver (and the model's default solver)
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool | None = None  # None: compile on CUDA; the run folder records what was done
    cuda_graph: bool = False  # replay each training step as one CUDA graph (one process, no accumulation)
    fsdp: bool = False
    grad_checkpointing: bool = False
    # fine-tuning (:mod:`.init`)
    init_from: str | None = None  # start from this model's weights (a new run: fresh optimizer and step)
    init_weights: str | None = None  # ema1, ema2 or raw (default: the source's default)
    class_map: str = "auto"  # new -> source classes: equal names, or a JSON file
    freeze: str | None = None  # comma-separated parameter name patterns kept fixed

    def lr_value(self) -> float:
        """Peak learning rate: ``lr`` or ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def objective(self) -> FlowMatching:
        """The flow-matching objective these settings describe."""
        return FlowMatching(
            prediction=self.prediction, loss=self.loss, p_mean=self.p_mean, p_std=self.p_std, t_eps=self.t_eps,
            noise_scale=self.noise_scale, label_drop_prob=self.label_drop,
        )  # fmt: skip


# fields that define the trajectory: a resumed run must keep them
TRAJECTORY_FIELDS = {
    "model", "img_size", "bottleneck_dim", "attn_drop", "proj_drop", "data", "data_split", "prediction",
    "loss", "p_mean", "p_std", "noise_scale", "t_eps", "label_drop", "batch_size", "lr", "blr", "min_lr",
    "schedule", "warmup_epochs", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "ema_decays",
    "seed", "freeze",
}  # fmt: skip


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


def compiles(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the model gets ``torch.compile``: on CUDA unless ``--no-compile``; never elsewhere."""
    return device.type == "cuda" and cfg.compile is not False


def compile_scope(sharded: bool) -> str:
    """The whole forward as one graph; per block under FSDP2 (which wraps each block)."""
    return "blocks" if sharded else "model"


def validate(cfg: TrainConfig, world_size: int) -> None:
    """Check the settings that need no data or model; errors name the flag."""
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
    if cfg.max_bad_images is not None and cfg.max_bad_images < 0:
        raise UserError(f"--max-bad-images must be 0 or more, got {cfg.max_bad_images}")
    parse_signals(cfg.preempt_signals)  # names the flag when a signal is unknown
    _check_counts(cfg)
    if not 0 < cfg.t_eps < 1:
        raise UserError(f"--t-eps must satisfy 0 < t_eps < 1 (it clamps the divisions by 1 - t), got {cfg.t_eps:g}")
    _check_sampling(cfg)
    if cfg.cuda_graph and (world_size > 1 or cfg.grad_accum > 1):
        raise UserError(f"--cuda-graph needs one process and --grad-accum 1 (got {world_size} processes, "
                        f"--grad-accum {cfg.grad_accum})")  # fmt: skip
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by processes x --grad-accum "
                        f"({world_size} x {cfg.grad_accum})")  # fmt: skip


# (flag, field, minimum): the counts a run divides by or loops over; 0 has a meaning only where said
_COUNTS = [
    ("--batch-size", "batch_size", 1), ("--grad-accum", "grad_accum", 1), ("--log-every", "log_every", 1),
    ("--ckpt-every", "ckpt_every", 0), ("--keep-last", "keep_last", 0), ("--sample-every", "sample_every", 0),
    ("--sample-steps", "sample_steps", 1), ("--sample-per-class", "sample_per_class", 1),
]  # fmt: skip
_OPTIONAL_COUNTS = [("--steps", "steps", 1), ("--warmup-steps", "warmup_steps", 0), ("--num-workers", "num_workers", 0)]


def _check_counts(cfg: TrainConfig) -> None:
    """Integer flags in range (``--ckpt-every 0``: only at the end; ``--keep-last 0``: keep all;
    ``--sample-every 0``: never); a one-line UserError naming the flag otherwise."""
    for flag, name, minimum in _COUNTS + [c for c in _OPTIONAL_COUNTS if getattr(cfg, c[1]) is not None]:
        check_count(getattr(cfg, name), minimum, flag)
    for flag, value in (("--epochs", cfg.epochs), ("--max-minutes", cfg.max_minutes)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} must be > 0, got {value:g}")


def _check_sampling(cfg: TrainConfig) -> None:
    """The sample grids' settings (also the model's sampling defaults), checked as ``jit sample`` checks
    its flags: the solver, the CFG interval, the steps and the time grid with the run's t_eps."""
    if cfg.sample_method not in METHODS:
        raise UserError(f"--sample-method must be one of {', '.join(METHODS)}, got {cfg.sample_method!r}")
    try:
        interval = check_interval(cfg.sample_interval, "--sample-interval")
        sampling_times(cfg.sample_method, cfg.sample_steps, cfg=cfg.sample_cfg, cfg_interval=interval,
                       t_eps=cfg.t_eps)  # fmt: skip
    except ValueError as err:
        raise UserError(str(err)) from None
