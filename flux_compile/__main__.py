"""``python -m flux_compile``: the ``flux-compile`` command line (see :mod:`flux_compile.cli`)."""
import sys

from .cli import main

sys.exit(main())
