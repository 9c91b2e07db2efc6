"""The fast path (bf16 autocast, Triton kernels, larger compiled regions) against the fp32 reference."""

import torch


def test_residual_stream_stays_bf16_under_autocast(golden):
    model = golden.model()
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    x, t, y = golden["forward.x"], golden["forward.t"], golden["forward.y"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, t, y)
    assert seen == [torch.bfloat16] * len(model.blocks)
    seen.clear()
    with torch.no_grad():
        model(x, t, y)
    assert seen == [torch.float32] * len(model.blocks)
