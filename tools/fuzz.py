"""Differential fuzzing of flux_compile from the command line.

    python tools/fuzz.py --count 2000 --seed 0 --group closure --out fuzz_failures

Generates random programs (tests/fuzzgen.py), checks each against NumPy, autograd and finite
differences, prints the failure classes with counts and writes one shrunk program per class
(its source, with the failure as a comment at the top) to ``--out``. Exit status 1 when any
program gave a wrong number or crashed.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import fuzzgen  # noqa: E402

if __name__ == "__main__":
    sys.exit(fuzzgen.main())
