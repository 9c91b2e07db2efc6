"""The ``jit train`` flags: one flag per :class:`TrainConfig` field, and how a run's config is resolved."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..diffusion.generate import interval_arg
from ..formats.checkpoint import list_checkpoints
from .config import TrainConfig, with_family_defaults
from .init import inherit


def _number_list(cast: type, what: str):
    """An argparse type: comma-separated values of ``cast``; ``what`` names them in the error."""

    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from err

    return parse


_floats = _number_list(float, "numbers")
_ints = _number_list(int, "whole numbers")


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# flag -> (TrainConfig field, type, help)
FLAGS = [
    ("--model", "model", str, "model preset, e.g. JiT-Ti/4, JiT-B/16, pMF-Ti/4, pMF-B/16 (see `jit presets`)"),
    ("--img-size", "img_size", int, "image size in pixels (default: the preset's)"),
    ("--bottleneck", "bottleneck_dim", int, "patch-embedding bottleneck width (default: preset's; 0 = none)"),
    ("--attn-drop", "attn_drop", float, "attention dropout in the middle half of the blocks"),
    ("--proj-drop", "proj_drop", float, "projection/FFN dropout in the middle half of the blocks"),
    ("--data", "data", str, "'emoji' (built-in), an image folder (class subfolders or flat), or a cache folder"),
    ("--data-split", "data_split", str, "dataset split to train on (emoji: train, heldout, all)"),
    ("--num-workers", "num_workers", int, "data loader workers per process (default 0 on CPU, 4 on CUDA)"),
    ("--max-bad-images", "max_bad_images", int, "stop when more distinct images than this fail to decode "
     "(default 0.1%% of the data, at least 10); each is replaced by another image of its class"),
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
    ("--beta1", "beta1", float, "Adam's first-moment decay (default 0.9; pMF with Muon: its Adam part)"),
    ("--beta2", "beta2", float, "Adam's second-moment decay (default 0.95; pMF with Muon: its Adam part)"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm (default 0 = off)"),
    ("--ema", "ema_decays", _floats, "comma-separated EMA decays (default 0.9999,0.9996)"),
    ("--seed", "seed", int, "global seed (default 0)"),
    ("--ckpt-every", "ckpt_every", int, "checkpoint every N steps (default 1000; always at the end; 0 = only at "
     "the end and on an early stop)"),
    ("--max-minutes", "max_minutes", float, "stop cleanly (checkpoint + samples) after this many minutes"),
    ("--keep-last", "keep_last", int, "checkpoints to keep (default 3; 0 = all)"),
    ("--preempt-signals", "preempt_signals", str, "on these signals finish the step, save a checkpoint and exit "
     "(default SIGTERM,SIGUSR1; 'none' to keep the default actions)"),
    ("--requeue-exit-code", "requeue_exit_code", int, "exit code after a preemption stop (default 0), e.g. the "
     "code your job script requeues on"),
    ("--log-every", "log_every", int, "log every N steps (default 20)"),
    ("--sample-every", "sample_every", int, "write an EMA sample grid every N steps (default 1000, 0 = never)"),
    ("--sample-per-class", "sample_per_class", int, "images per class in the sample grids (default 8)"),
    ("--sample-cfg", "sample_cfg", float, "guidance weight of the sample grids (and the model's default)"),
    ("--sample-steps", "sample_steps", int, "ODE steps of the sample grids (default 50)"),
    ("--sample-method", "sample_method", str, "ODE solver of the sample grids and the model's default: heun "
     "(default), euler, dpm++2m, dpm++3m, unipc"),
    ("--init-from", "init_from", str, "fine-tune: start a new run from this model's weights (run folder, checkpoint, "
     "export, official .pth, diffusers folder; pMF runs from pMF sources); its preset, image size, prediction, noise "
     "scale and sampling settings are inherited unless given; optimizer and step start fresh"),
    ("--init-weights", "init_weights", str, "which weights of --init-from: ema1 (default), ema2 or raw"),
    ("--class-map", "class_map", str, "--init-from: label rows of classes with the same name are copied ('auto', "
     "default) or as a JSON file maps new -> source classes (names or indices); others start at the mean row"),
    ("--freeze", "freeze", str, "keep these parameters fixed: comma-separated name patterns, e.g. "
     "blocks.0-5,x_embedder (a trailing range expands; globs work)"),
    ("--lora-rank", "lora_rank", int, "--init-from: train LoRA adapters of this rank on --lora-targets instead of "
     "the weights (everything else frozen; checkpoints hold only the adapters)"),
    ("--lora-alpha", "lora_alpha", float, "LoRA scale alpha / rank (default alpha = rank)"),
    ("--lora-targets", "lora_targets", _names, "comma-separated module names (or name tails) that get adapters "
     "(default attn.qkv,attn.proj,mlp.w12,mlp.w3 of every block; e.g. add y_embedder.embedding_table for new "
     "classes)"),
    ("--device", "device", str, "auto (default), cpu, cuda"),
    ("--precision", "precision", str, "auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 or fp32"),
    ("--optimizer", "optimizer", str, "adamw (JiT's default) or muon (pMF's: Muon on matrices, Nesterov Adam on "
     "the rest)"),
    ("--ema-half-lives", "ema_half_lives", _floats, "comma-separated EMA half-lives in kimg, EDM rule each step "
     "(pMF default 500,1000,2000; replaces --ema)"),
    ("--cfg-max", "cfg_max", float, "pMF: guidance weights omega ~ 1/omega on [1, 1 + cfg-max] (default 7; 0 = no "
     "guidance: the target is the conditional velocity and sampling uses omega 1)"),
    ("--fm-fraction", "fm_fraction", float, "pMF: share of the global batch trained with r = t (default 0.5)"),
    ("--tr-uniform", "tr_uniform", float, "pMF: share of images whose t and r are both drawn from U(0, 1) instead of "
     "the logit-normal (default 0; the public H/16 recipe: 0.1)"),
    ("--tr-uniform-fm", "tr_uniform_fm", float, "pMF: that share among the r = t (flow-matching) images only "
     "(default: --tr-uniform's, the public rule; 0 keeps their logit-normal t)"),
    ("--jvp-tangent", "jvp_tangent", str, "pMF: the JVP's dz: v-head (default, the public objective: the v head's "
     "velocity), sample (MeanFlow's e - x) or u-head (the model's velocity from u at h = 0); the last two build "
     "the network without its v head: cheaper steps"),
    ("--jvp-method", "jvp_method", str, "pMF: how du/dt is computed: autodiff (default, forward-mode AD), "
     "difference (central differences in fp32, about 1e-4 relative error; cheaper on a CPU) or one-sided (one "
     "forward instead of two, the loss forward's u as the other point; about 1e-3; cheapest on a CPU)"),
    ("--prefix-tokens", "prefix_tokens", _ints, "pMF: prefix token counts class,omega,interval,gap (default: the "
     "preset's; Ti 4,1,1,1, B/L/H 8,4,2,4). With --cfg-max 0 the omega and interval tokens condition on "
     "nothing; 1,0,0,1 keeps one class and one gap token, for a cheaper step (sampling then takes --cfg 1 only)"),
    ("--lpips-weights", "lpips_weights", str, "pMF: add the LPIPS term, from LOCAL files: torchvision's vgg16 state "
     "dict and the LPIPS vgg.pth (comma-separated, or one file with both); nothing is downloaded"),
    ("--lpips-loss-weight", "lpips_loss_weight", float, "pMF: weight of the LPIPS term (default 0.4)"),
    ("--convnext-weights", "convnext_weights", str, "pMF: add the ConvNeXt logit-distance term, from a LOCAL "
     "torchvision convnext_{tiny,small,base,large} state dict"),
    ("--convnext-loss-weight", "convnext_loss_weight", float, "pMF: weight of the ConvNeXt term (default 0.1)"),
    ("--perceptual-max-t", "perceptual_max_t", float, "pMF: the perceptual terms compare the one-step image with "
     "the data where the pMF time t (1 = noise) is below this (default 0.8; H/16: 0.6)"),
]

PMF_EPILOG = ("pMF models (--model pMF-Ti/4 ... pMF-H/32) train with the pMF objective (one-step generation); "
              "their defaults where not given: --p-mean 0.8 --p-std 0.8, the preset's --noise-scale, "
              "--optimizer muon --lr 1e-3 constant without warm-up, --ema-half-lives 500,1000,2000, and sample "
              "grids with the preset's public guidance (--sample-cfg = omega, --sample-interval in our time, "
              "--sample-steps 1). Not for pMF: --prediction/--loss, dropout, --cuda-graph, "
              "--grad-checkpointing; --compile (CUDA, opt-in) traces the JVP with torch.func.jvp; --fsdp shards each "
              "block (the JVP then runs in its own pass without gradient) and needs --optimizer adamw.")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand and its flags (every flag defaults to None: "not given")."""
    p = sub.add_parser(
        "train", help="train a JiT or pMF model (one process, or many under torchrun)",
        description="Train JiT or pMF on the built-in emoji data or an image folder. Run with torchrun for several "
                    "processes/GPUs/nodes. The run folder gets config.json, checkpoints/, tb/ and samples/.",
        epilog=PMF_EPILOG,
    )  # fmt: skip
    p.add_argument("--out", default=None, help="run folder (default runs/jit)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a folder that holds a run: its config.json, checkpoints, TensorBoard "
                        "events and sample grids are removed first (other files stay); without --resume or "
                        "--overwrite such a folder is refused")  # fmt: skip
    p.add_argument("--config", default=None, help="start from this JSON config (flags given override it)")
    for flag, name, typ, help_text in FLAGS:
        p.add_argument(flag, dest=name, type=typ, default=None, help=help_text)
    p.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                   help="torch.compile the model (JiT: the default on CUDA; pMF: only when given; never on CPU)")
    p.add_argument("--no-compile", dest="compile", action="store_const", const=False,
                   help="do not compile (faster start, slower steps)")
    p.add_argument("--cuda-graph", dest="cuda_graph", action="store_const", const=True, default=None,
                   help="replay each training step as one CUDA graph (one process, --grad-accum 1)")
    p.add_argument("--strict-data", dest="strict_data", action="store_const", const=True, default=None,
                   help="stop at the first image that does not decode instead of replacing it")
    p.add_argument("--fsdp", dest="fsdp", action="store_const", const=True, default=None,
                   help="shard parameters with FSDP2 under torchrun")
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", action="store_const", const=True, default=None,
                   help="recompute block activations in the backward pass (saves memory)")
    p.add_argument("--sample-interval", dest="sample_interval", type=interval_arg("--sample-interval"),
                   default=None, help="CFG interval of the sample grids and the model's default, e.g. 0.1,1.0 "
                                      "(as jit sample --interval)")  # fmt: skip
    return p


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
    resuming = bool(args.resume and (out / "config.json").is_file() and list_checkpoints(out))
    if resuming:
        base = json.loads((out / "config.json").read_text())
    base = {k: v for k, v in base.items() if k in names}
    cfg = TrainConfig(**with_family_defaults({**base, **explicit}))
    if cfg.steps is None and cfg.epochs is None:
        cfg.steps = 1000
    if cfg.init_from and not resuming:  # a resumed run continues from its own checkpoint
        cfg = inherit(cfg, set(base) | set(explicit))
    return cfg, bool(args.resume)
