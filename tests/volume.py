"""How much the randomized differential tests draw: a few examples, or ./dev volume's many."""
from __future__ import annotations

import os


def examples(env: str, default: int, full: int) -> int:
    """Examples per hypothesis test: ``$env`` if set, else ``full`` when HERMES_VOLUME=1, else
    ``default``."""
    if env in os.environ:
        return int(os.environ[env])
    return full if os.environ.get("HERMES_VOLUME") == "1" else default
