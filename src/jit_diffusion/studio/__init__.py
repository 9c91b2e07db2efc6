"""``jit studio``: a local web page (Gradio, the ``studio`` extra) to sample a model, compare two settings
on the same noise and look at a training run. :mod:`.limits` and :mod:`.session` hold the caps and the
requests without any web code; :mod:`.app` builds the page (the one module that imports Gradio);
:mod:`.runs` reads a run folder."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "limits": ("Limits",),
    "runs": ("loss_curve", "preview_grids"),
    "session": ("Result", "Settings", "Studio"),
})
