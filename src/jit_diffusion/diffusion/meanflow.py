"""The pixel MeanFlow training objective (public JAX ``pmf.py``), in pMF time (t = 1 noise, t = 0 image).

Per image x with label y: two logit-normal times with t >= r (the first half of the global batch has
r = t: flow-matching samples), z = (1 - t) x + t e, v_t = (z - x) / clip(t, 0.05, 1), a guidance weight
omega with density 1/omega on [1, 1 + cfg_max] and an interval [t_min, t_max]. The guided target v_g comes
from the model's own v head (no gradient; only the rows it needs); the JVP of u along (dz, dt, dr) = (v_c, 1, 0)
gives du/dt (only where r < t) and V = u + (t - r) sg(du/dt). Loss per image: |V - v_g|^2 and |v - v_g|^2,
each divided by sg(L + 0.01). With ``tangent="sample"`` (MeanFlow's form) the JVP's dz is the path's own
e - x and the network may have no v head: the v term is then dropped and v_c, v_u come from u at h = 0.
``tangent="u-head"`` keeps the public objective's model velocity as dz, taken from u at h = 0 (which is the
velocity there), so that it too needs no v head.

Every random draw is a function of (seed, step, position in the global batch) (:mod:`rng`), including
the two batch-level rules (the flow-matching half and the class dropout of the first n images), so one
process and N processes, accumulation and resume all see the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..core import rng
from ..models.layers import at_least_fp32
from .flow import logit_normal

# stream ids of the pMF draws (rng's own: 1-5; time and noise reuse rng.STREAM_TIME / STREAM_NOISE)
STREAM_R, STREAM_T_MIN, STREAM_T_MAX, STREAM_OMEGA, STREAM_CLASS_DROP, STREAM_TR_UNIFORM = 11, 12, 13, 14, 15, 16
PMF_STREAMS = (STREAM_R, STREAM_T_MIN, STREAM_T_MAX, STREAM_OMEGA, STREAM_CLASS_DROP, STREAM_TR_UNIFORM)
TANGENTS = ("v-head", "sample", "u-head")

# an extra loss term: (x_hat, x) -> per-image loss (B,), e.g. LPIPS from local weights
PerceptualLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MeanFlowDraws:
    """The random inputs of one step for this process's images (all (B,) but ``noise``)."""

    t: torch.Tensor
    r: torch.Tensor
    noise: torch.Tensor  # (B, C, H, W), unit variance
    t_min: torch.Tensor
    t_max: torch.Tensor
    omega: torch.Tensor
    flow_matching: torch.Tensor  # bool: r = t and interval [0, 1]
    dropped: torch.Tensor  # bool: null label, target v_t


def cfg_scale(uniform: torch.Tensor, cfg_max: float, cfg_beta: float = 1.0) -> torch.Tensor:
    """Guidance weights on [1, 1 + cfg_max] with density proportional to omega^-cfg_beta, from U(0, 1) draws."""
    if cfg_beta == 1.0:
        return torch.exp(uniform * math.log1p(cfg_max))  # inverse CDF of 1/omega
    log_base = (1.0 - cfg_beta) * math.log1p(cfg_max)
    return torch.exp(torch.log1p(uniform * math.expm1(log_base)) / (1.0 - cfg_beta))


def drop_classes(labels, v_g, v_t, dropped: torch.Tensor, null_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class dropout: the ``dropped`` images get the null label and the unguided target v_t."""
    labels = torch.where(dropped, torch.full_like(labels, null_label), labels)
    return labels, torch.where(dropped.view(-1, 1, 1, 1), v_t, v_g)


def adaptive_weighted(loss: torch.Tensor, eps: float = 0.01, power: float = 1.0) -> torch.Tensor:
    """loss / sg((loss + eps)^power)."""
    return loss / (loss.detach() + eps) ** power


@dataclass
class PMFObjective:
    """pMF loss; defaults are the public module's (pMF-B/16 trains with p_mean 0.8, p_std 0.8)."""

    p_mean: float = -0.4
    p_std: float = 1.0
    cfg_max: float = 7.0
    cfg_beta: float = 1.0
    noise_scale: float = 1.0
    data_proportion: float = 0.5
    class_dropout_prob: float = 0.1
    tr_uniform: float = 0.0  # share of images with t, r ~ U(0, 1) instead (0.1 for H/16)
    tr_uniform_fm: float | None = None  # that share among the flow-matching images (None: tr_uniform)
    norm_eps: float = 0.01
    norm_p: float = 1.0
    t_clip: float = 0.05
    perceptual: Sequence[tuple[float, PerceptualLoss]] = field(default_factory=tuple)  # (weight, loss)
    perceptual_max_t: float = 1.0
    tangent: str = "v-head"  # the JVP's dz: the v head's v_c, "sample": MeanFlow's e - x, "u-head": v_c from u at
    # h = 0 (the last two need no v head)

    def __post_init__(self):
        if self.tangent not in TANGENTS:
            raise ValueError(f"pMF objective: tangent must be one of {TANGENTS}, got {self.tangent!r}")
        for name in ("data_proportion", "class_dropout_prob", "tr_uniform", "tr_uniform_fm"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"pMF objective: {name} must lie in [0, 1], got {getattr(self, name)}")
        if not (self.cfg_max >= 0 and self.p_std > 0 and self.norm_eps > 0 and self.noise_scale > 0):
            raise ValueError("pMF objective: cfg_max must be >= 0 and p_std, norm_eps, noise_scale > 0, got "
                             f"{self.cfg_max}, {self.p_std}, {self.norm_eps}, {self.noise_scale}")  # fmt: skip

    # --- draws -------------------------------------------------------------------------------------

    def counter_draws(
        self, seed: int, step: int, positions: torch.Tensor, global_batch: int, sample_shape: tuple[int, ...]
    ) -> MeanFlowDraws:
        """The draws for the images at ``positions`` of the global batch of ``step`` (see :mod:`rng`)."""
        draw_u = lambda stream, n=1: rng.uniform(seed, step, stream, positions, n)  # noqa: E731
        t = logit_normal(rng.normal(seed, step, rng.STREAM_TIME, positions, 1)[:, 0], self.p_mean, self.p_std)
        r = logit_normal(rng.normal(seed, step, STREAM_R, positions, 1)[:, 0], self.p_mean, self.p_std)
        fm = positions < int(global_batch * self.data_proportion)  # the first images: r = t
        fm_share = self.tr_uniform if self.tr_uniform_fm is None else self.tr_uniform_fm
        if self.tr_uniform > 0 or fm_share > 0:
            mask_t_r = draw_u(STREAM_TR_UNIFORM, 3)  # (B, 3): which, t, r
            uniform = mask_t_r[:, 0] < torch.where(fm, fm_share, self.tr_uniform)
            t, r = torch.where(uniform, mask_t_r[:, 1], t), torch.where(uniform, mask_t_r[:, 2], r)
        r = torch.where(fm, t, r)
        t, r = torch.maximum(t, r), torch.minimum(t, r)
        noise = rng.normal(seed, step, rng.STREAM_NOISE, positions, math.prod(sample_shape))
        t_min = torch.where(fm, 0.0, 0.5 * draw_u(STREAM_T_MIN)[:, 0])  # U(0, 0.5)
        t_max = torch.where(fm, 1.0, 0.5 + 0.5 * draw_u(STREAM_T_MAX)[:, 0])  # U(0.5, 1)
        omega = cfg_scale(draw_u(STREAM_OMEGA)[:, 0], self.cfg_max, self.cfg_beta)
        return MeanFlowDraws(t, r, noise.view(-1, *sample_shape), t_min, t_max, omega, fm,
                             self.dropped(seed, step, positions, global_batch))  # fmt: skip

    def dropped(self, seed: int, step: int, positions: torch.Tensor, global_batch: int) -> torch.Tensor:
        """Class dropout: n = #{U(0,1) < p} over the global batch; the images at positions < n are dropped."""
        if self.class_dropout_prob <= 0:
            return torch.zeros_like(positions, dtype=torch.bool)
        every = torch.arange(global_batch, device=positions.device)
        count = (rng.uniform(seed, step, STREAM_CLASS_DROP, every)[:, 0] < self.class_dropout_prob).sum()
        return positions < count

    # --- loss --------------------------------------------------------------------------------------

    @torch.no_grad()
    def guided_velocities(self, model, z, t, labels, draws: MeanFlowDraws, null_label: int, cond_rows=None):
        """(w, v_c, v_u) from :meth:`velocity_head`'s head at h = 0 with the interval input [0, 1]: w = omega
        inside [t_min, t_max] and 1 outside, v_c at (y, w) for ``cond_rows`` (default: every image), v_u at
        (null, 1) only for the images whose target uses it (w != 1 and the class is kept: elsewhere (1 - 1/w)
        = 0 or dropout replaces the target by v_t); rows not computed are 0. One forward of the rows
        needed; a compiled network, which wants fixed shapes, gets all 2B."""
        B = z.shape[0]
        w = guidance_weight(t, draws)
        every = torch.arange(B, device=z.device)
        cond, uncond = every, every
        if not fixed_shapes(model):
            cond = every if cond_rows is None else cond_rows.nonzero()[:, 0]
            uncond = ((w != 1) & ~draws.dropped).nonzero()[:, 0]
        n = len(cond) + len(uncond)
        v_c, v_u = torch.zeros_like(z), torch.zeros_like(z)
        if n:
            ones, zeros = torch.ones(n, dtype=t.dtype, device=t.device), torch.zeros(n, dtype=t.dtype, device=t.device)
            pick = lambda a, b: torch.cat([a[cond], b[uncond]])  # noqa: E731
            head = self.velocity_head(model)
            outputs = model(pick(z, z), pick(t, t), zeros, pick(w, torch.ones_like(w)), zeros, ones,
                            pick(labels, torch.full_like(labels, null_label)), heads=head)  # fmt: skip
            v_all = outputs[1] if head == "v" else outputs[0]
            v_c_rows, v_u_rows = v_all.to(z.dtype).split([len(cond), len(uncond)])
            v_c, v_u = v_c.index_copy(0, cond, v_c_rows), v_u.index_copy(0, uncond, v_u_rows)
        return w, v_c, v_u

    def velocity_head(self, model) -> str:
        """The head whose output at h = 0 is taken as the velocity: "v", or "u" (u(z, t, t) is the velocity
        too) for a network without a v head or with the "u-head" tangent."""
        return "v" if has_v_head(model) and self.tangent != "u-head" else "u"

    def guided_target(self, model, z, t, v_t, labels, draws: MeanFlowDraws, null_label: int):
        """(v_g, v_c): the guided velocity target v_g = v_t + (1 - 1/w)(v_c - v_u) and the conditional
        velocity v_c (the JVP tangent), see :meth:`guided_velocities`. The public code's third set, (y,
        omega) for the flow-matching images, equals (y, w) there (their interval is [0, 1], so w = omega),
        and its result is used nowhere else."""
        w, v_c, v_u = self.guided_velocities(model, z, t, labels, draws, null_label)
        return guided(v_t, w, v_c, v_u), v_c

    def per_sample_losses(self, model, x, labels, draws: MeanFlowDraws, null_label: int | None = None):
        """Per-image terms (B,): ``loss`` (weighted total), ``u``, ``v`` (raw squared errors) and any
        perceptual terms (raw, zero where t >= perceptual_max_t). ``model`` may be wrapped (DDP, compile):
        it is only called; ``null_label`` defaults to the network's num_classes."""
        null_label = num_classes(model) if null_label is None else null_label
        x = at_least_fp32(x)  # the path and targets in fp32 (float64 stays float64)
        draws = MeanFlowDraws(*(d.to(x.dtype) if d.is_floating_point() else d for d in vars(draws).values()))
        t, r, shape = draws.t, draws.r, (-1, 1, 1, 1)
        e = draws.noise * self.noise_scale
        z = (1 - t.view(shape)) * x + t.view(shape) * e
        v_t = (z - x) / t.clamp(self.t_clip, 1.0).view(shape)
        # the r = t images need no JVP ((t - r) du/dt = 0) and, where their class is kept, take v_c from the
        # velocity the network computes for them below (same inputs: h = 0, w = omega, interval [0, 1], y)
        fixed, fm, sample = fixed_shapes(model), draws.flow_matching, self.tangent == "sample"
        if self.tangent == "v-head" and not has_v_head(model):
            raise ValueError("the pMF objective's v-head tangent needs a network with a v head; use tangent "
                             "'sample' or 'u-head'")
        cond_rows = ~fm
        if sample:  # v_c only where the guided target uses it: w != 1 and the class kept
            cond_rows = cond_rows & (guidance_weight(t, draws) != 1) & ~draws.dropped
        w, v_c, v_u = self.guided_velocities(model, z, t, labels, draws, null_label, None if fixed else cond_rows)
        kept = torch.where(draws.dropped, torch.full_like(labels, null_label), labels)
        tangent = (e - x) if sample else v_c  # dz/dt of the path, or the network's own velocity
        u, v, du_dt = model(z, t, t - r, draws.omega, draws.t_min, draws.t_max, kept, jvp_tangent=tangent,
                            jvp_rows=~fm)  # fmt: skip
        if not fixed:
            instant = (v if self.velocity_head(model) == "v" else u).detach().to(v_c.dtype)  # h = 0: u is one too
            v_c = torch.where((fm & ~draws.dropped).view(shape), instant, v_c)
        labels, v_g = drop_classes(labels, guided(v_t, w, v_c, v_u), v_t, draws.dropped, null_label)
        V = u + (t - r).view(shape) * du_dt  # du_dt carries no gradient
        terms = {"u": (V - v_g).square().sum(dim=(1, 2, 3))}
        total = adaptive_weighted(terms["u"], self.norm_eps, self.norm_p)
        if v is not None:  # the v head's own loss
            terms["v"] = (v - v_g).square().sum(dim=(1, 2, 3))
            total = total + adaptive_weighted(terms["v"], self.norm_eps, self.norm_p)
        if self.perceptual:
            x_hat = z - t.view(shape) * u  # the one-step image, compared with x where t < perceptual_max_t
            near = (t < self.perceptual_max_t).nonzero()[:, 0]  # only those images go through the feature nets
            for i, (weight, term) in enumerate(self.perceptual):
                value = torch.zeros_like(t)
                if len(near):
                    value = value.index_put((near,), term(x_hat[near], x[near]).to(t.dtype))
                terms[f"perceptual{i}"] = value
                total = total + weight * adaptive_weighted(value, self.norm_eps, self.norm_p)
        terms["loss"] = total
        return terms

    def loss(self, model, x: torch.Tensor, labels: torch.Tensor, draws: MeanFlowDraws,
             null_label: int | None = None) -> torch.Tensor:  # fmt: skip
        """Mean over the batch of the adaptively weighted u, v (and perceptual) terms; ``x`` in [-1, 1]."""
        return self.per_sample_losses(model, x, labels, draws, null_label)["loss"].mean()


def guidance_weight(t: torch.Tensor, draws: MeanFlowDraws) -> torch.Tensor:
    """w (B,): omega where t lies in the image's interval [t_min, t_max] (always for flow matching), else 1."""
    inside = draws.flow_matching | ((t >= draws.t_min) & (t <= draws.t_max))
    return torch.where(inside, draws.omega, torch.ones_like(draws.omega))


def guided(v_t: torch.Tensor, w: torch.Tensor, v_c: torch.Tensor, v_u: torch.Tensor) -> torch.Tensor:
    """The guided target v_t + (1 - 1/w)(v_c - v_u); w (B,)."""
    return v_t + (1 - 1 / w).view(-1, 1, 1, 1) * (v_c - v_u)


def fixed_shapes(model) -> bool:
    """Whether ``model`` (through torch.compile and DDP wrappers) wants the same calls every step: compiled
    for fixed shapes (``compile_model``) or sharded per block with FSDP2 (every rank must then run the same
    sequence of block forwards, whatever its images). The objective then keeps its batch sizes fixed."""
    return getattr(unwrap(model), "jvp_transform", None) in ("func", "separate")


def unwrap(model):
    """The network inside torch.compile and DDP wrappers."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return getattr(inner, "module", inner)  # DDP wrapper


def has_v_head(model) -> bool:
    """Whether a network (through wrappers) has the v head; one without the attribute is taken to have it."""
    return bool(getattr(unwrap(model), "has_v_head", True))


def num_classes(model) -> int:
    """``num_classes`` of a network, through torch.compile and DDP wrappers."""
    return int(unwrap(model).num_classes)
