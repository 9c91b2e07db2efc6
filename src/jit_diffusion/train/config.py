"""What defines a training run: :class:`TrainConfig` (saved as the run folder's ``config.json``),
the model it builds and the checks made before anything is loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.device import check_precision
from ..core.errors import UserError, check_count
from ..diffusion.flow import SPACES, FlowMatching
from ..diffusion.meanflow import PMFObjective
from ..diffusion.pmf_sampling import network_interval, our_interval
from ..diffusion.sampling import METHODS, check_interval, sampling_times
from ..models.config import JiTConfig, preset_config
from ..models.jit import JiT
from ..models.lora import DEFAULT_TARGETS
from ..models.pmf import DIFFERENCES, PMF
from ..models.pmf_config import PMF_DEFAULTS, PREFIX_FIELDS, PMFConfig, pmf_preset_config
from .signals import DEFAULT_SIGNALS, parse_signals

_OBJECTIVE = FlowMatching()  # the objective's defaults are the run's defaults
JVP_METHODS = ("autodiff", *DIFFERENCES)  # TrainConfig.jvp_method: forward-mode AD or finite differences


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
    lora_rank: int | None = None  # LoRA adapters of this rank (:mod:`.lora`); None: full fine-tuning
    lora_alpha: float | None = None  # adapter scale alpha / rank (default alpha = rank)
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # module names (or name tails)
    # pMF (--model pMF-*; family defaults in family_defaults): guidance-weight law, flow-matching share, EMAs
    cfg_max: float = 7.0  # omega ~ 1/omega on [1, 1 + cfg_max]
    fm_fraction: float = 0.5  # share of the global batch with r = t
    tr_uniform: float = 0.0  # share of images with t, r ~ U(0, 1) instead of logit-normal (H/16 recipe: 0.1)
    tr_uniform_fm: float | None = None  # that share among the r = t images (default: tr_uniform, the public rule)
    jvp_tangent: str = "v-head"  # "sample" (MeanFlow's e - x) and "u-head" build the network without the v head
    jvp_method: str = "autodiff"  # forward-mode AD, or "difference"/"one-sided": finite differences (cheaper on a CPU)
    prefix_tokens: list[int] | None = None  # class, omega, interval (each end), gap token counts (None: the preset's)
    lpips_weights: str | None = None  # local file(s) of the LPIPS term (:mod:`.perceptual`); None = off
    lpips_loss_weight: float = 0.4
    convnext_weights: str | None = None  # local file of the ConvNeXt term; None = off
    convnext_loss_weight: float = 0.1
    perceptual_max_t: float = 0.8  # pMF time: the perceptual terms apply where t < this (H/16: 0.6)
    optimizer: str = "adamw"  # or muon (pMF: Muon on matrices, Nesterov Adam on the rest)
    ema_half_lives: list[float] = field(default_factory=list)  # kimg, EDM rule each step (instead of ema_decays)

    @property
    def family(self) -> str:
        """The model family, from the preset name: "pmf" for pMF-*, else "jit"."""
        return model_family(self.model)

    def lr_value(self) -> float:
        """Peak learning rate: ``lr`` or ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def objective(self) -> FlowMatching | PMFObjective:
        """The objective these settings describe: flow matching (JiT) or the pMF objective."""
        if self.family == "pmf":
            try:
                return PMFObjective(p_mean=self.p_mean, p_std=self.p_std, cfg_max=self.cfg_max,
                                    noise_scale=self.noise_scale, data_proportion=self.fm_fraction,
                                    class_dropout_prob=self.label_drop, t_clip=self.t_eps,
                                    tr_uniform=self.tr_uniform, tr_uniform_fm=self.tr_uniform_fm,
                                    perceptual_max_t=self.perceptual_max_t,
                                    tangent=self.jvp_tangent)  # fmt: skip
            except ValueError as err:
                flags = ("--cfg-max/--fm-fraction/--tr-uniform/--tr-uniform-fm/--label-drop/--p-std/--noise-scale/"
                         "--jvp-tangent")
                raise UserError(f"{flags}: {err}") from None
        return FlowMatching(
            prediction=self.prediction, loss=self.loss, p_mean=self.p_mean, p_std=self.p_std, t_eps=self.t_eps,
            noise_scale=self.noise_scale, label_drop_prob=self.label_drop,
        )  # fmt: skip


# fields that define the trajectory: a resumed run must keep them
TRAJECTORY_FIELDS = {
    "model", "img_size", "bottleneck_dim", "attn_drop", "proj_drop", "data", "data_split", "prediction",
    "loss", "p_mean", "p_std", "noise_scale", "t_eps", "label_drop", "batch_size", "lr", "blr", "min_lr",
    "schedule", "warmup_epochs", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "ema_decays",
    "seed", "cfg_max", "fm_fraction", "tr_uniform", "tr_uniform_fm", "jvp_tangent", "jvp_method", "prefix_tokens",
    "lpips_loss_weight", "convnext_loss_weight", "perceptual_max_t", "optimizer", "ema_half_lives", "freeze",
    "lora_rank", "lora_alpha", "lora_targets",
}  # fmt: skip


def model_family(model: str) -> str:
    """"pmf" for a pMF preset name (pMF-...), "jit" otherwise."""
    return "pmf" if model.startswith("pMF-") else "jit"


def family_defaults(model: str) -> dict:
    """The defaults of ``model``'s family where they differ from JiT's: for pMF the public recipe (B/16's
    objective, Muon at lr 1e-3 constant without warm-up, EDM EMAs of 500/1000/2000 kimg) and the preset's
    public sampling settings (omega, interval in our time, one step)."""
    if model_family(model) != "pmf":
        return {}
    public = PMF_DEFAULTS.get(model, PMF_DEFAULTS["pMF-B/16"])
    return dict(p_mean=0.8, p_std=0.8, noise_scale=public.noise_scale, lr=1e-3, warmup_epochs=0.0,
                optimizer="muon", ema_decays=[], ema_half_lives=[500.0, 1000.0, 2000.0], sample_cfg=public.omega,
                sample_interval=[round(v, 12) for v in our_interval(*public.interval)], sample_steps=1)  # fmt: skip


def with_family_defaults(given: dict) -> dict:
    """The fields the user gave plus the family's defaults for the ones not given (the only place where
    defaults depend on --model). Giving --ema or --blr keeps the family's EMA half-lives or lr out."""
    defaults = family_defaults(given.get("model", TrainConfig.model))
    if "ema_decays" in given:
        defaults["ema_half_lives"] = []
    if "ema_half_lives" in given:
        defaults["ema_decays"] = []
    if "blr" in given:
        defaults.pop("lr", None)
    narrower = given.get("cfg_max") is not None and given["cfg_max"] < TrainConfig.cfg_max
    if "sample_cfg" in defaults and narrower:  # fewer omegas trained than the public recipe's: one of them
        defaults["sample_cfg"] = min(defaults["sample_cfg"], 1.0 + given["cfg_max"])
    return {**{k: v for k, v in defaults.items() if k not in given}, **given}


def model_config(cfg: TrainConfig, num_classes: int) -> JiTConfig | PMFConfig:
    """The preset's config with the run's overrides; errors name the flag."""
    overrides = dict(num_classes=num_classes, attn_drop=cfg.attn_drop, proj_drop=cfg.proj_drop)
    if cfg.family == "pmf":  # no dropout; at least one class (the check of the data comes later)
        overrides = dict(num_classes=max(1, num_classes), v_head=cfg.jvp_tangent == "v-head")
        if cfg.prefix_tokens is not None:
            overrides.update(zip(PREFIX_FIELDS, cfg.prefix_tokens))
    if cfg.img_size is not None:
        overrides["input_size"] = cfg.img_size
    if cfg.bottleneck_dim is not None:
        overrides["bottleneck_dim"] = cfg.bottleneck_dim or None
    try:
        return (pmf_preset_config if cfg.family == "pmf" else preset_config)(cfg.model, **overrides)
    except ValueError as err:
        msg = str(err)
        if "image size" in msg:
            msg = f"--img-size: {msg} of {cfg.model}"
        elif "unknown model preset" in msg or "unknown pMF preset" in msg:
            msg = f"--model: {msg}"
        raise UserError(msg) from None


def build_network(cfg: TrainConfig, num_classes: int) -> JiT | PMF:
    """The run's network (JiT or pMF, by --model), freshly initialised from the torch RNG."""
    config = model_config(cfg, num_classes)
    return (PMF if cfg.family == "pmf" else JiT)(**dataclasses.asdict(config))


def compiles(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the model gets ``torch.compile``: on CUDA unless ``--no-compile`` (pMF: only with ``--compile``);
    never elsewhere."""
    wanted = cfg.compile is not False if cfg.family == "jit" else cfg.compile is True
    return device.type == "cuda" and wanted


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
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise UserError(f"--beta1/--beta2 must lie in [0, 1), got {cfg.beta1:g}, {cfg.beta2:g}")
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
    validate_family(cfg, world_size)
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


def check_prefix_tokens(cfg: TrainConfig) -> None:
    """--prefix-tokens: four counts, at least one class and one gap token, and the omega and interval tokens
    that guidance training (--cfg-max > 0) conditions on."""
    tokens = cfg.prefix_tokens
    if tokens is None:
        return
    if len(tokens) != 4 or min(tokens) < 0 or min(tokens[0], tokens[3]) < 1:
        raise UserError(f"--prefix-tokens: expected four counts class,omega,interval,gap with >= 1 class and gap "
                        f"token, e.g. 1,0,0,1; got {','.join(map(str, tokens))}")  # fmt: skip
    if cfg.cfg_max > 0 and min(tokens[1], tokens[2]) < 1:
        raise UserError(f"--prefix-tokens {','.join(map(str, tokens))}: guidance training (--cfg-max "
                        f"{cfg.cfg_max:g}) needs >= 1 omega and interval token; give --cfg-max 0 to train without")


def validate_family(cfg: TrainConfig, world_size: int) -> None:
    """The flags that depend on the model family; errors name the flag."""
    if cfg.optimizer not in ("adamw", "muon"):
        raise UserError(f"--optimizer must be adamw or muon, got {cfg.optimizer!r}")
    if cfg.ema_decays and cfg.ema_half_lives:
        raise UserError("give --ema (fixed decays) or --ema-half-lives (EDM rule), not both")
    if any(h <= 0 for h in cfg.ema_half_lives):
        raise UserError(f"--ema-half-lives must be positive (kimg), got {cfg.ema_half_lives}")
    if cfg.family == "jit":
        if cfg.ema_half_lives and cfg.cuda_graph:
            raise UserError("--ema-half-lives with --cuda-graph: a captured step keeps fixed EMA decays; use --ema")
        if cfg.optimizer == "muon":
            raise UserError("--optimizer muon is for pMF models (--model pMF-...); JiT trains with adamw")
        pmf_only = (cfg.tr_uniform, cfg.tr_uniform_fm is not None, cfg.lpips_weights, cfg.convnext_weights,
                    cfg.jvp_tangent != TrainConfig.jvp_tangent, cfg.jvp_method != TrainConfig.jvp_method,
                    cfg.prefix_tokens is not None)  # fmt: skip
        if any(pmf_only):
            raise UserError("--tr-uniform(-fm)/--lpips-weights/--convnext-weights/--jvp-tangent/--jvp-method/"
                            "--prefix-tokens are for pMF models (--model pMF-...)")
        return
    jit_only = {  # flag -> why not, when given
        "--prediction/--loss": (cfg.prediction != _OBJECTIVE.prediction or cfg.loss != _OBJECTIVE.loss,
                                "the pMF objective is fixed (x-prediction, u and v losses)"),
        "--attn-drop/--proj-drop": (bool(cfg.attn_drop or cfg.proj_drop), "the pMF network has no dropout"),
        "--cuda-graph": (cfg.cuda_graph, "its step (forward-mode JVP, Muon) is not captured"),
        "--compile with --fsdp": (bool(cfg.compile and cfg.fsdp), "the compiled JVP graph is not traced through "
                                  "FSDP2's hooks"),
        "--grad-checkpointing": (cfg.grad_checkpointing, "not with the forward-mode JVP"),
        f"--jvp-method {cfg.jvp_method} with --compile/--fsdp": (cfg.jvp_method in DIFFERENCES and bool(
            cfg.compile or cfg.fsdp), "those trace or shard the forward-mode JVP"),
    }  # fmt: skip
    for flag, (given, why) in jit_only.items():
        if given:
            raise UserError(f"{flag} is not available for pMF models ({cfg.model}): {why}")
    if cfg.jvp_method not in JVP_METHODS:
        raise UserError(f"--jvp-method must be one of {', '.join(JVP_METHODS)}, got {cfg.jvp_method!r}")
    check_prefix_tokens(cfg)
    cfg.objective()  # the objective's own range checks, named by flag
    if not 0 < cfg.perceptual_max_t <= 1 or min(cfg.lpips_loss_weight, cfg.convnext_loss_weight) < 0:
        raise UserError(f"--perceptual-max-t must lie in (0, 1] and the perceptual loss weights be >= 0, got "
                        f"{cfg.perceptual_max_t}, {cfg.lpips_loss_weight}, {cfg.convnext_loss_weight}")
    for flag, path in (("--lpips-weights", cfg.lpips_weights), ("--convnext-weights", cfg.convnext_weights)):
        missing = [p for p in (path or "").split(",") if p.strip() and not Path(p.strip()).is_file()]
        if missing:
            raise UserError(f"{flag} {missing[0].strip()}: no such file (perceptual weights are local files only)")
    if cfg.sample_cfg < 1.0:
        raise UserError(f"--sample-cfg: the pMF guidance weight omega must be >= 1, got {cfg.sample_cfg}")
    try:
        network_interval(cfg.sample_interval)
    except ValueError as err:
        raise UserError(f"--sample-interval: {err}") from None
    if cfg.optimizer == "muon" and cfg.fsdp and world_size > 1:
        raise UserError("--fsdp with --optimizer muon: Muon orthogonalises whole matrices; use --optimizer adamw")
    if cfg.optimizer == "muon" and cfg.weight_decay:
        raise UserError("--weight-decay: the pMF recipe's Muon has no weight decay; use --optimizer adamw")
