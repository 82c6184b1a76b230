"""Make ``src/`` importable when the package is not installed (e.g. a fresh checkout)."""

import os
import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

# Hypothesis: derandomized in CI (the same examples every run: a failure is reproducible and nothing is
# caught by chance), random locally; `HYPOTHESIS_PROFILE=ci` picks the CI profile by hand.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
