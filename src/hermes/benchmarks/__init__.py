"""Benchmarks behind ``hermes bench``: engine speed and device round trips (figures, not tests)."""
from __future__ import annotations

import os
from pathlib import Path


def find_shared(sub: str) -> Path | None:
    """Locate ``shared/<sub>`` (the corpus and bench data beside the checkout), or None.

    Looks at ``$HERMES_SHARED``, then ``../shared`` from the working directory and from the
    source tree upwards.
    """
    env = os.environ.get("HERMES_SHARED")
    candidates = [Path(env)] if env else []
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in [start, *start.parents]:
            candidates.append(parent / "shared")
            candidates.append(parent.parent / "shared")
    for c in candidates:
        if (c / sub).exists():
            return c / sub
    return None
