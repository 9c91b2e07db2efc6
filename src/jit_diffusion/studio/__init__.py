"""``jit studio``: a local web page (Gradio, the ``studio`` extra) to sample a model, compare two settings
on the same noise and look at a training run. :mod:`.limits` and :mod:`.session` hold the caps and the
requests without any web code; :mod:`.app` builds the page; :mod:`.runs` reads a run folder."""
