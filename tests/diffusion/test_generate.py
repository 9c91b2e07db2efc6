"""generate(): a compiled network sees one batch shape, and padding a batch changes no image."""

import numpy as np
import torch

from jit_diffusion import create_model
from jit_diffusion.diffusion.generate import generate

KWARGS = dict(image_size=16, batch_size=2, method="euler", steps=2, cfg=1.0, seed=3)


def _model():
    torch.manual_seed(0)
    return create_model("JiT-Ti/4", num_classes=4, input_size=16).eval()


def test_compiled_network_is_not_recompiled_for_short_batches():
    """Five images in batches of two, then a short chunk of one after them (as ``jit eval`` asks): the
    compiled forward keeps its first shape (a recompile would raise), and the images are those of the
    plain network."""
    plain = generate(_model(), [0, 1, 2, 3, 0], **KWARGS)
    plain_tail = generate(_model(), [1], start_index=5, **KWARGS)
    model = _model()
    model.compile(backend="eager", dynamic=False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        images = generate(model, [0, 1, 2, 3, 0], **KWARGS)
        tail = generate(model, [1], start_index=5, **KWARGS)
    assert images.shape == (5, 16, 16, 3) and tail.shape == (1, 16, 16, 3)
    assert np.abs(images.astype(int) - plain.astype(int)).max() <= 1
    assert np.abs(tail.astype(int) - plain_tail.astype(int)).max() <= 1


def test_plain_network_is_not_padded():
    """Without compile nothing is padded: a batch's rows are the images asked for, in order."""
    seen = []
    model = _model()
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    generate(model, [0, 1, 2], **KWARGS)
    assert sorted(set(seen)) == [1, 2]
