"""Training pMF models with ``jit train``: family defaults, flag errors, exact resume, 1 vs 2 processes and
gradient accumulation, and the loss falling on a tiny dataset."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import make_image_folder, max_abs_diff

from jit_diffusion import cli
from jit_diffusion.diffusion.meanflow import PMFObjective
from jit_diffusion.diffusion.pmf_sampling import sample_pmf
from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint
from jit_diffusion.models.pmf import PMF
from jit_diffusion.train.config import TrainConfig, with_family_defaults
from jit_diffusion.train.flags import config_from_args
from jit_diffusion.train.pmf_optim import edm_ema_beta
from jit_diffusion.train.trainer import Trainer

# pMF-Ti/4 at 16 px (16 patches + 8 prefix tokens), batch 8 of 32 images in 4 classes
TINY = ["--model", "pMF-Ti/4", "--img-size", "16", "--batch-size", "8", "--log-every", "2", "--sample-every", "0",
        "--keep-last", "10", "--label-drop", "0.3", "--ema-half-lives", "0.01,0.1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _args(*flags):
    return cli.build_parser().parse_args(["train", *flags])


def _final(run_dir) -> dict:
    ckpt = read_checkpoint(latest_checkpoint(run_dir))
    return {"model": ckpt["model"], **ckpt["ema"], "step": ckpt["step"], "ckpt": ckpt}


def test_family_defaults_only_where_not_given():
    cfg, _ = config_from_args(_args("--model", "pMF-B/32", "--p-std", "1.2", "--out", "/tmp/unused"))
    assert (cfg.family, cfg.p_mean, cfg.p_std, cfg.noise_scale) == ("pmf", 0.8, 1.2, 2.0)
    assert (cfg.optimizer, cfg.lr, cfg.warmup_epochs, cfg.schedule) == ("muon", 1e-3, 0.0, "constant")
    assert (cfg.ema_decays, cfg.ema_half_lives) == ([], [500.0, 1000.0, 2000.0])
    # public B/32 sampling: omega 6.5, interval [0.1, 0.7] in pMF time = [0.3, 0.9] in ours, one step
    assert (cfg.sample_cfg, cfg.sample_interval, cfg.sample_steps) == (6.5, [0.3, 0.9], 1)
    cfg, _ = config_from_args(_args("--model", "pMF-Ti/4", "--ema", "0.99", "--blr", "1e-4", "--optimizer", "adamw"))
    assert (cfg.ema_decays, cfg.ema_half_lives, cfg.lr, cfg.optimizer) == ([0.99], [], None, "adamw")
    cfg, _ = config_from_args(_args("--model", "pMF-Ti/4", "--beta1", "0.8", "--beta2", "0.99"))
    assert (cfg.beta1, cfg.beta2) == (0.8, 0.99)
    cfg, _ = config_from_args(_args("--model", "pMF-H/16", "--tr-uniform", "0.1"))
    assert cfg.tr_uniform == 0.1 and cfg.objective().tr_uniform == 0.1
    # a narrower --cfg-max than the public 7 samples at an omega the run trains on; 7 (given or not) keeps 8.5
    for cfg_max, omega in ((0.0, 1.0), (3.0, 4.0), (7.0, 8.5), (9.0, 8.5)):
        cfg, _ = config_from_args(_args("--model", "pMF-Ti/4", "--cfg-max", str(cfg_max)))
        assert cfg.sample_cfg == omega
    jit, _ = config_from_args(_args("--model", "JiT-Ti/4"))
    assert jit == TrainConfig(model="JiT-Ti/4", steps=1000)  # JiT: the dataclass defaults, nothing else
    assert jit.family == "jit" and with_family_defaults({"model": "JiT-B/16"}) == {"model": "JiT-B/16"}


@pytest.mark.parametrize("flags, needle", [
    (["--prediction", "eps"], "--prediction/--loss is not available for pMF models"),
    (["--cuda-graph"], "--cuda-graph is not available for pMF"),
    (["--compile", "--fsdp"], "--compile with --fsdp is not available for pMF"),
    (["--grad-checkpointing"], "--grad-checkpointing is not available for pMF"),
    (["--attn-drop", "0.1"], "--attn-drop/--proj-drop"),
    (["--weight-decay", "0.1"], "--weight-decay: the pMF recipe's Muon has no weight decay"),
    (["--optimizer", "sgd"], "--optimizer must be adamw or muon, got 'sgd'"),
    (["--ema", "0.9"], "give --ema (fixed decays) or --ema-half-lives (EDM rule), not both"),
    (["--fm-fraction", "1.5"], "data_proportion must lie in [0, 1], got 1.5"),
    (["--tr-uniform", "-0.1"], "--p-std/--noise-scale/--jvp-tangent: pMF objective: tr_uniform must"),
    (["--tr-uniform-fm", "1.5"], "--tr-uniform-fm/--label-drop/--p-std/--noise-scale/--jvp-tangent: pMF objective: "
                                 "tr_uniform_fm must lie in [0, 1], got 1.5"),
    (["--model", "pMF-Q/3"], "--model: unknown pMF preset 'pMF-Q/3'"),
    (["--sample-cfg", "0.5"], "--sample-cfg: the pMF guidance weight omega must be >= 1, got 0.5"),
    (["--jvp-method", "exact"], "--jvp-method must be one of autodiff, difference, one-sided, got 'exact'"),
    (["--jvp-tangent", "model"], "--jvp-tangent: pMF objective: tangent must be one of ('v-head', 'sample', 'u-head')"),
    (["--jvp-method", "one-sided", "--compile"], "--jvp-method one-sided with --compile/--fsdp is not available"),
    (["--prefix-tokens", "1,0,0,1"], "--prefix-tokens 1,0,0,1: guidance training (--cfg-max 7) needs >= 1 omega and "
                                     "interval token; give --cfg-max 0"),
    (["--prefix-tokens", "0,0,0,1", "--cfg-max", "0"], "--prefix-tokens: expected four counts class,omega,interval,"
                                                       "gap with >= 1 class and gap token, e.g. 1,0,0,1; got 0,0,0,1"),
    (["--prefix-tokens", "1,1,1"], "expected four counts class,omega,interval,gap"),
])  # fmt: skip
def test_bad_flags_are_one_line_errors_before_any_work(tmp_path, capsys, flags, needle):
    data = make_image_folder(tmp_path / "data", num_classes=2, per_class=4)
    code = cli.main(["train", *TINY, "--data", str(data), "--steps", "1", "--out", str(tmp_path / "run"), *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_muon_for_jit_and_unlabelled_data_are_refused(tmp_path, capsys):
    flat = make_image_folder(tmp_path / "flat", num_classes=2, per_class=4, flat=True)
    assert cli.main(["train", *TINY, "--data", str(flat), "--steps", "1", "--out", str(tmp_path / "a")]) == 2
    assert "pMF models train on labelled images" in capsys.readouterr().err
    assert cli.main(["train", "--model", "JiT-Ti/4", "--img-size", "16", "--batch-size", "8", "--optimizer", "muon",
                     "--data", str(flat), "--steps", "1", "--out", str(tmp_path / "b")]) == 2
    assert "--optimizer muon is for pMF models" in capsys.readouterr().err
    for flag, value in (("--tr-uniform", "0.1"), ("--tr-uniform-fm", "0.1"), ("--prefix-tokens", "1,0,0,1")):
        assert cli.main(["train", "--model", "JiT-Ti/4", "--img-size", "16", "--batch-size", "8", flag, value,
                         "--data", str(flat), "--steps", "1", "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--tr-uniform(-fm)/--lpips-weights/--convnext-weights/--jvp-tangent" in err[0]


def test_prefix_tokens_without_guidance(tmp_path, capsys):
    """--prefix-tokens 1,0,0,1 --cfg-max 0: a network with one class and one gap token (2 prefix tokens instead
    of the Ti preset's 8) trains, records its shape, samples at omega 1 (its default), and refuses another
    omega in one line, from the CLI and from the library."""
    data = make_image_folder(tmp_path / "data", num_classes=2, per_class=4)
    run = tmp_path / "run"
    flags = ["--prefix-tokens", "1,0,0,1", "--cfg-max", "0", "--label-drop", "0", "--optimizer", "adamw",
             "--jvp-tangent", "sample", "--jvp-method", "one-sided"]  # fmt: skip
    assert cli.main(["train", *TINY, "--data", str(data), "--steps", "2", "--out", str(run), *flags]) == 0
    ckpt = read_checkpoint(latest_checkpoint(run))
    tokens = [ckpt["model_config"][k] for k in ("num_class_tokens", "num_cfg_tokens", "num_interval_tokens",
                                                "num_time_tokens")]  # fmt: skip
    assert tokens == [1, 0, 0, 1] and ckpt["model"]["pos_embed"].shape[1] == 2 + 16
    npz = tmp_path / "s.npz"
    assert cli.main(["sample", str(run), "--per-class", "1", "--device", "cpu", "--npz", str(npz)]) == 0
    capsys.readouterr()
    assert cli.main(["sample", str(run), "--cfg", "2", "--device", "cpu", "--npz", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cfg 2: this pMF network has no omega and interval tokens" in err[0]
    model = PMF(**ckpt["model_config"])
    noise = torch.randn(2, 3, 16, 16)
    assert sample_pmf(model, torch.tensor([0, 1]), noise).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="no omega and interval tokens"):
        sample_pmf(model, torch.tensor([0, 1]), noise, omega=2.0)


def _config(tmp_path, name, **fields) -> TrainConfig:
    given = dict(model="pMF-Ti/4", img_size=16, batch_size=8, steps=4, ckpt_every=2, sample_every=0, label_drop=0.3,
                 ema_half_lives=[0.01, 0.1], out=str(tmp_path / name), data=str(tmp_path / "data"))
    return TrainConfig(**with_family_defaults({**given, **fields}))


@pytest.mark.slow
@pytest.mark.parametrize("fields", [{}, dict(jvp_tangent="sample", jvp_method="difference"),
                                    dict(jvp_tangent="u-head")],
                         ids=["public", "sample-tangent-differences", "u-head-tangent"])  # fmt: skip
def test_resume_is_bitwise_identical(tmp_path, fields):
    """4 steps in one go == 2 steps, a checkpoint, and a resumed run to 4: weights, both EMAs, Muon and
    NAdam state; the checkpoint says it is a pMF run and holds the PMFConfig (without the v head for the
    sample and u-head tangents); the sample grid is written."""
    make_image_folder(tmp_path / "data")
    for name, steps, resume in (("full", 4, False), ("part", 2, False), ("part", 4, True)):
        cfg = _config(tmp_path, name, steps=steps, sample_every=4, sample_per_class=2, **fields)
        trainer = Trainer(cfg, resume=resume)
        trainer.run()
        trainer.close()
    full, part = _final(tmp_path / "full"), _final(tmp_path / "part")
    assert full["step"] == part["step"] == 4
    for key in ("model", "ema1", "ema2"):
        for name, value in full[key].items():
            assert torch.equal(value, part[key][name]), f"{key}/{name}"
    for side in ("muon", "adam"):
        for index, state in full["ckpt"]["optimizer"][side]["state"].items():
            for k, v in state.items():
                other = part["ckpt"]["optimizer"][side]["state"][index][k]
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(other)), (side, index, k)
    ckpt = full["ckpt"]
    assert ckpt["model_family"] == "pmf" and ckpt["model_config"]["aux_head_depth"] == 2
    public = not fields
    assert ckpt["model_config"]["v_head"] == public and any(k.startswith("v_heads.") for k in ckpt["model"]) == public
    PMF(**ckpt["model_config"]).load_state_dict(ckpt["model"], strict=True)
    assert (tmp_path / "part" / "samples" / "step_00000004.png").is_file()
    # EDM EMA with a 10-image half-life after 4 steps of 8 images: ramp-up gives 0.5^(8 / (3 * 8 * 0.05))
    assert edm_ema_beta(3, 8, 0.01) == pytest.approx(0.5 ** (8 / 1.2))


@pytest.mark.slow
def test_two_processes_and_accumulation_match_one(tmp_path):
    """torchrun with 2 gloo processes (DDP: the JVP is inside the model's forward; FSDP2 with a resume; the
    sample tangent with one-sided differences) and --grad-accum 2 give the weights of one process on the same global
    batch, to float rounding; the draws
    (flow-matching half, first-n class dropout) are decided over the global batch."""
    data = make_image_folder(tmp_path / "data")
    common = [*TINY, "--data", str(data), "--steps", "3", "--ckpt-every", "3"]

    def run(*extra, launcher=("-m",)):
        res = subprocess.run([sys.executable, *launcher, "jit_diffusion.cli", "train", *common, *extra],
                             capture_output=True, text=True, env=ENV, timeout=600)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]

    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m")
    run("--out", str(tmp_path / "one"))
    run("--grad-accum", "2", "--out", str(tmp_path / "accum"))
    run("--out", str(tmp_path / "two"), launcher=torchrun)
    # FSDP2 (AdamW: Muon needs whole matrices): 2 steps, then a resume from full tensors to 3
    run("--optimizer", "adamw", "--out", str(tmp_path / "one_adamw"))
    run("--optimizer", "adamw", "--fsdp", "--steps", "2", "--out", str(tmp_path / "fsdp"), launcher=torchrun)
    run("--optimizer", "adamw", "--fsdp", "--resume", "--out", str(tmp_path / "fsdp"), launcher=torchrun)
    # no v head, du/dt by one-sided differences (each rank on its own rows, from its own loss forward's u)
    sample = ("--jvp-tangent", "sample", "--jvp-method", "one-sided")
    run(*sample, "--out", str(tmp_path / "one_sample"))
    run(*sample, "--out", str(tmp_path / "two_sample"), launcher=torchrun)
    ref = _final(tmp_path / "one")
    assert _final(tmp_path / "two")["ckpt"]["world_size"] == 2
    pairs = (("two", ref), ("accum", ref), ("fsdp", _final(tmp_path / "one_adamw")),
             ("two_sample", _final(tmp_path / "one_sample")))  # fmt: skip
    for name, reference in pairs:
        other = _final(tmp_path / name)
        assert other["step"] == 3
        for key in ("model", "ema1", "ema2"):
            worst = max_abs_diff(reference[key], other[key])
            print(f"{name} vs one process, {key}: max abs diff {worst:.2e}")
            # one-sided differences divide the rounding of each rank's smaller loss forward by eps = 1e-3
            assert worst < (3e-5 if name == "two_sample" else 1e-5), (name, key, worst)
    torch.manual_seed(0)  # the trainer seeds with --seed before building the model
    init = PMF(**ref["ckpt"]["model_config"]).state_dict()
    assert max_abs_diff(init, ref["model"]) > 1e-3  # the weights moved


def _raw_losses(model, objective: PMFObjective, x, labels) -> float:
    """Mean unweighted u and v errors over 4 fixed draws (the trained loss is adaptively weighted: ~2)."""
    total = 0.0
    with torch.no_grad():
        for step in range(4):
            draws = objective.counter_draws(99, step, torch.arange(len(x)), len(x), tuple(x.shape[1:]))
            terms = objective.per_sample_losses(model, x, labels, draws)
            total += (terms["u"] + terms["v"]).mean().item() / 4
    return total


class MeanImage(torch.nn.Module):
    """A baseline network that always predicts the mean image: u = v = (z - mean) / t, du/dt = 0."""

    num_classes = 4

    def __init__(self, mean: torch.Tensor):
        super().__init__()
        self.mean = mean

    def forward(self, z, t, h, omega, t_min, t_max, y, heads=None, jvp_tangent=None, jvp_rows=None):
        u = (z - self.mean.expand_as(z)) / t.clamp(0.05, 1.0).view(-1, 1, 1, 1)
        return (u, u, torch.zeros_like(u)) if jvp_tangent is not None else (u, u)


@pytest.mark.slow
def test_loss_falls_on_a_tiny_dataset(tmp_path):
    """30 Muon steps (lr 1e-2) on 4 classes of 8 images: the raw u + v errors on held draws fall below a
    third of their start and below those of predicting the data's mean image (2244 -> 617; mean 786)."""
    make_image_folder(tmp_path / "data")
    trainer = Trainer(_config(tmp_path, "run", steps=30, ckpt_every=30, log_every=10, lr=1e-2))
    x = torch.stack([trainer.dataset[i][0] for i in range(16)]).float() / 127.5 - 1
    labels = torch.tensor([trainer.dataset[i][1] for i in range(16)])
    objective = trainer.objective
    before = _raw_losses(trainer.raw_model, objective, x, labels)
    mean_image = _raw_losses(MeanImage(x.mean(0, keepdim=True)), objective, x, labels)
    trainer.run()
    trainer.close()
    after = _raw_losses(trainer.raw_model, objective, x, labels)
    print(f"raw u + v error: {before:.1f} -> {after:.1f} (mean image: {mean_image:.1f})")
    assert after < min(before / 3, mean_image), (before, after, mean_image)
