"""The CUDA-graph-ready training step computes what the trainer's train_step computes."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jit_diffusion.core.parallel import load_optimizer_state
from jit_diffusion.train.graphed_step import GraphedTrainStep, apply_update, micro_batch_backward
from jit_diffusion.train.optim import capturable_adamw, set_learning_rate
from jit_diffusion.train.trainer import TrainConfig, Trainer, param_groups


class TinyData(torch.utils.data.Dataset):
    num_classes, image_size, class_names = 4, 16, ["a", "b", "c", "d"]

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = torch.from_numpy(rng.integers(0, 256, (16, 3, 16, 16), dtype=np.uint8))
        self.labels = torch.arange(16) % 4

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _trainer(tmp_path, grad_clip, device="cpu"):
    cfg = TrainConfig(model="JiT-Ti/4", img_size=16, batch_size=8, steps=10, lr=1e-3, warmup_steps=2, device=device,
                      ema_decays=[0.9, 0.5], grad_clip=grad_clip, label_drop=0.3, sample_every=0, out=str(tmp_path),
                      compile=False)  # the graph is under test here, not the compiler (minutes on a GPU)
    return Trainer(cfg, dataset=TinyData())


@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_same_numbers_as_trainer_train_step(tmp_path, grad_clip):
    """Three steps (warm-up lr included) of the static-buffer step equal the trainer's, bit for bit:
    weights, both EMAs, optimizer state and losses."""
    reference, fast = _trainer(tmp_path / "a", grad_clip), _trainer(tmp_path / "b", grad_clip)
    step = GraphedTrainStep(model=fast.train_model, raw_model=fast.raw_model, objective=fast.objective,
                            augment=fast.augment, optimizer=fast.optimizer, ema=fast.ema,
                            positions=fast._positions + fast._first_position(0), use_bf16=False, grad_clip=grad_clip)
    data = TinyData()
    for s, lr in enumerate([0.0, 5e-4, 1e-3]):
        batch = (data.images[8 * (s % 2) : 8 * (s % 2) + 8], data.labels[8 * (s % 2) : 8 * (s % 2) + 8])
        reference.step = s
        loss_ref = reference.train_step([batch], lr)
        loss = step(*batch, s, lr)
        assert torch.equal(loss, loss_ref)
    for (name, p), q in zip(reference.raw_model.named_parameters(), fast.raw_model.parameters()):
        assert torch.equal(p, q), name
    for name in reference.ema.names:
        for a, b in zip(reference.ema.shadows[name], fast.ema.shadows[name]):
            assert torch.equal(a, b)
    ref_state, state = reference.optimizer.state_dict()["state"], fast.optimizer.state_dict()["state"]
    for key in ref_state:
        assert all(torch.equal(ref_state[key][k], state[key][k]) for k in ("exp_avg", "exp_avg_sq"))


def test_cuda_graph_flag_trains_the_same_weights(tmp_path):
    """``--cuda-graph`` routes the trainer's steps through the static-buffer step (eager on a CPU): the same
    weights as the plain step after a few steps, bit for bit."""
    runs = []
    for cuda_graph in (False, True):
        cfg = TrainConfig(model="JiT-Ti/4", img_size=16, batch_size=8, steps=10, lr=1e-3, warmup_steps=2,
                          device="cpu", ema_decays=[0.9], grad_clip=0.05, label_drop=0.3, sample_every=0,
                          cuda_graph=cuda_graph, out=str(tmp_path / str(cuda_graph)))  # fmt: skip
        trainer = Trainer(cfg, dataset=TinyData())
        assert (trainer.graphed is not None) == cuda_graph
        data = TinyData()
        for s in range(3):
            trainer.step = s
            trainer.train_step([(data.images[:8], data.labels[:8])], 1e-3 * min(1.0, s / 2))
        runs.append([p.detach().clone() for p in trainer.raw_model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_cuda_graph_flag_refuses_accumulation():
    from jit_diffusion.core.errors import UserError
    from jit_diffusion.train.config import validate

    with pytest.raises(UserError, match="--cuda-graph needs one process and --grad-accum 1"):
        validate(TrainConfig(cuda_graph=True, grad_accum=2, batch_size=8, steps=1), world_size=1)


def test_learning_rate_tensor_updated_in_place():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3))
    lr_tensor = opt.param_groups[0]["lr"]
    set_learning_rate(opt, 2.5e-4)
    assert opt.param_groups[0]["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(2.5e-4)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3)
    set_learning_rate(plain, 3e-4)
    assert plain.param_groups[0]["lr"] == 3e-4


def test_resume_keeps_the_optimizers_own_kernel_settings():
    """A checkpoint of a plain run loads into a capturable optimizer (and the other way round) without
    changing how the loading optimizer steps; the learnt state is loaded exactly."""
    model = torch.nn.Linear(3, 2)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    model(torch.randn(4, 3)).sum().backward()
    plain.step()
    lr_tensor = torch.tensor(5e-4)
    graphed = torch.optim.AdamW(model.parameters(), lr=lr_tensor, capturable=True)
    load_optimizer_state(model, graphed, plain.state_dict(), sharded=False)
    group = graphed.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor) and torch.equal(group["lr"], lr_tensor)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(graphed.state[model.weight][key], plain.state[model.weight][key])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    load_optimizer_state(model, fresh, graphed.state_dict(), sharded=False)
    group = fresh.param_groups[0]
    assert not group["capturable"] and group["foreach"] and group["lr"] == 1e-3


def test_capturable_adamw_on_cpu_is_the_plain_update():
    model = torch.nn.Linear(4, 3)
    opt = capturable_adamw(param_groups(model, 0.0), 1e-3, (0.9, 0.95), torch.device("cpu"))
    assert opt.defaults["foreach"] and not opt.defaults["capturable"]


class _NoHostData(TorchDispatchMode):
    """Fails on a tensor made from Python data (torch.tensor): on a GPU that is a host-to-device copy."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            raise AssertionError("a tensor made from Python data inside the step")
        return func(*args, **(kwargs or {}))


def test_step_body_makes_no_host_tensors(tmp_path):
    """What a CUDA graph cannot capture, found on a CPU: after a warm-up step, the draws, forward, loss,
    backward, clipping and EMAs make no tensor from Python data and none on the default device. The
    default device is meta here, so a table made without ``device=`` and then moved (a host-to-device copy
    on a GPU) fails to copy out of meta. The PyTorch ops run here, as on a GPU with ``--kernels off``. The
    optimizer step is left out: on a CPU torch's AdamW is not the capturable one the GPU step uses."""
    trainer = _trainer(tmp_path, 0.05)
    positions = trainer._positions + trainer._first_position(0)
    data = TinyData()
    trainer.step = 0
    trainer.train_step([(data.images[:8], data.labels[:8])], 1e-3)  # the warm-up fills every lazy state
    step = torch.zeros((), dtype=torch.int64)

    class NoUpdate:
        def step(self):
            pass

    with torch.device("meta"), _NoHostData():
        loss = micro_batch_backward(trainer.train_model, trainer.objective, trainer.augment, data.images[:8],
                                    data.labels[:8], step, positions, use_bf16=False)  # fmt: skip
        apply_update(trainer.raw_model, NoUpdate(), trainer.ema, grad_clip=0.05)
    assert torch.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_replays_equal_eager_steps(tmp_path):
    """On a GPU: 2 eager warm-up steps, a capture, then replays, against 6 eager steps of the same step.

    The math attention backend keeps every kernel deterministic, so the two runs can only differ if the
    graph computed something else."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    runs = []
    for cuda_graph in (False, True):
        trainer = _trainer(tmp_path / str(cuda_graph), 0.05, device="cuda")
        optimizer = capturable_adamw(param_groups(trainer.raw_model, 0.0), 1e-3, (0.9, 0.95), trainer.device)
        step = GraphedTrainStep(model=trainer.train_model, raw_model=trainer.raw_model, objective=trainer.objective,
                                augment=trainer.augment, optimizer=optimizer, ema=trainer.ema,
                                positions=trainer._positions + trainer._first_position(0), use_bf16=True,
                                grad_clip=0.05, cuda_graph=cuda_graph, warmup_steps=2)
        data = TinyData()
        with sdpa_kernel(SDPBackend.MATH):
            losses = [step(data.images[:8], data.labels[:8], s, 1e-3 * min(1.0, s / 2)) for s in range(6)]
        assert (step.graph is not None) == cuda_graph
        runs.append((torch.stack(losses), [p.detach().clone() for p in trainer.raw_model.parameters()],
                     [e.clone() for e in trainer.ema.shadows["ema2"]]))
    (loss_a, weights_a, ema_a), (loss_b, weights_b, ema_b) = runs
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    for a, b in zip(weights_a + ema_a, weights_b + ema_b):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
