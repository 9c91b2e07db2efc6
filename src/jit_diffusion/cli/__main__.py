"""``python -m jit_diffusion.cli``: the ``jit`` command."""

import sys

from . import main

sys.exit(main())
