"""Peak memory and img/s of fine-tuning: full vs LoRA vs frozen trunk, each with and without gradient checkpointing.

    python benchmarks/bench_finetune_memory.py --preset cpu --threads 1        # JiT-Ti/4, JiT-S/4 at 32 px
    python benchmarks/bench_finetune_memory.py --preset gpu                     # JiT-B/16, JiT-L/16 at 256 px
    python benchmarks/bench_finetune_memory.py --models JiT-B/16 --img-size 256 --batch-size 64 --device cuda

Every row runs in a fresh process: the real trainer (``Trainer`` with ``--init-from`` a random-weight export
of the preset, then ``train_step`` on a fixed synthetic batch: forward, backward, AdamW, every EMA).
Modes: ``full`` (every weight trains), ``lora`` (``--lora-rank``, default 8, on the default targets) and
``frozen`` (``--freeze blocks``: only the embedders and the output layer train).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` over the steps (weights, EMAs, optimizer state,
gradients, activations). On a CPU (Linux) the peak resident set over the timed steps (``VmHWM``, reset
through ``/proc/self/clear_refs`` after the warm-up steps, freed memory first returned with ``malloc_trim``)
less the file-backed pages (library code, mapped files) and less the anonymous memory held before the trainer
was built: the same things, counted in pages the process holds, so a few MB of allocator slack are noise.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = {"cpu": (["JiT-Ti/4", "JiT-S/4"], 32, 16), "gpu": (["JiT-B/16", "JiT-L/16"], 256, 32)}
MODES = ("full", "lora", "frozen")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="models, size and batch (default: "
                   "gpu on a CUDA device, else cpu)")  # fmt: skip
    p.add_argument("--models", default=None, help="comma-separated presets (overrides --preset's)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the optimizer state appears here)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per row")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one row, as JSON
    return p.parse_args()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _release_and_reset_peak() -> None:
    """Return freed heap pages to the system and restart the peak resident-set counter (Linux)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")


def run_row(spec: dict) -> dict:
    """One measurement in this process: build the fine-tuning trainer, run the steps, return the numbers."""
    import peft  # noqa: F401  (imported by LoRA runs: loaded before the baseline in every row)
    import torch
    from common import SyntheticDataset, timed

    from jit_diffusion.train.trainer import TrainConfig, Trainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    mode = spec["mode"]
    cfg = TrainConfig(model=spec["model"], img_size=spec["img_size"], batch_size=spec["batch_size"], steps=10**9,
                      lr=1e-4, warmup_steps=0, device=spec["device"], compile=False, sample_every=0,
                      grad_checkpointing=spec["grad_checkpointing"], init_from=spec["source"], out=spec["out"],
                      lora_rank=spec["rank"] if mode == "lora" else None,
                      freeze="blocks" if mode == "frozen" else None)  # fmt: skip
    cuda = torch.device(spec["device"]).type == "cuda" if spec["device"] != "auto" else torch.cuda.is_available()
    anon_before = _status_kb("RssAnon")
    data = SyntheticDataset(spec["batch_size"], spec["img_size"], spec["num_classes"])
    trainer = Trainer(cfg, dataset=data)
    device = trainer.device
    batch = (data.images, torch.as_tensor(data.labels))
    trainable = sum(p.numel() for p in trainer.raw_model.parameters() if p.requires_grad)

    def step():
        trainer.train_step([batch], 1e-4)
        trainer.step += 1

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["warmup"]):  # the optimizer state appears; on a CPU every kernel's code is paged in
        step()
    if not cuda:
        _release_and_reset_peak()
    times = timed(step, device, 0, spec["steps"])
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # peak resident set less the file-backed pages (code, mapped files) and what was there before
        peak_mb = (_status_kb("VmHWM") - _status_kb("RssFile") - _status_kb("RssShmem") - anon_before) / 1024
    img_s = spec["batch_size"] / statistics.median(times)
    return {**spec, "trainable": trainable, "params": trainer.raw_model.num_params(), "peak_mb": peak_mb,
            "img_s": img_s, "device_name": str(device)}  # fmt: skip


def make_source(model: str, img_size: int, num_classes: int, folder: Path) -> Path:
    """A random-weight export of ``model`` to fine-tune from."""
    import torch

    from jit_diffusion.models.jit import create_model
    from jit_diffusion.models.pretrained import save_pretrained

    torch.manual_seed(0)
    save_pretrained(create_model(model, input_size=img_size, num_classes=num_classes), folder)
    return folder


def main() -> None:
    args = parse_args()
    if args.row:
        print("ROW " + json.dumps(run_row(json.loads(args.row))))
        return
    import torch
    from common import echo_command

    echo_command()
    preset = args.preset or ("gpu" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    models, size, batch = PRESETS[preset]
    models = args.models.split(",") if args.models else models
    size, batch = args.img_size or size, args.batch_size or batch
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            source = make_source(model, size, args.num_classes, Path(tmp) / model.replace("/", "_"))
            for mode in args.modes.split(","):
                for gc_on in (False, True):
                    spec = dict(model=model, img_size=size, batch_size=batch, mode=mode, grad_checkpointing=gc_on,
                                rank=args.rank, device=args.device, threads=args.threads, source=str(source),
                                num_classes=args.num_classes, steps=args.steps, warmup=args.warmup,
                                out=str(Path(tmp) / "run"))  # fmt: skip
                    res = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True,
                                         text=True)  # fmt: skip
                    found = [ln for ln in res.stdout.splitlines() if ln.startswith("ROW ")]
                    if res.returncode or not found:
                        sys.exit(f"row {model} {mode} failed:\n{res.stderr[-2000:]}")
                    rows.append(json.loads(found[-1][4:]))
                    print_row(rows[-1], header=len(rows) == 1)


def print_row(row: dict, header: bool) -> None:
    """One line of the markdown table (and its header before the first)."""
    if header:
        print(f"\n{row['device_name']}, batch {row['batch_size']}, {row['steps']} timed steps after "
              f"{row['warmup']}, LoRA rank {row['rank']}\n")
        print("| model | px | mode | grad ckpt | trainable params | peak memory (MB) | img/s |")
        print("|---|---|---|---|---|---|---|")
    print(f"| {row['model']} | {row['img_size']} | {row['mode']} | {'on' if row['grad_checkpointing'] else 'off'} "
          f"| {row['trainable']:,} ({100 * row['trainable'] / row['params']:.1f}%) | {row['peak_mb']:,.0f} "
          f"| {row['img_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
