"""The shared corpus and bench data for the tests: ``$HERMES_SHARED``, or beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

#: The checkout this test tree belongs to.
CHECKOUT = Path(__file__).resolve().parents[2]


def shared_dir(sub: str) -> Path | None:
    """``<shared>/<sub>`` if it exists, else None; ``<shared>`` is ``$HERMES_SHARED`` when set.

    Without the variable it is ``shared`` beside the checkout, as CI and ``vm/harness.py`` lay it
    out, or inside it.
    """
    env = os.environ.get("HERMES_SHARED")
    roots = [Path(env)] if env else [CHECKOUT.parent / "shared", CHECKOUT / "shared"]
    return next((root / sub for root in roots if (root / sub).exists()), None)
