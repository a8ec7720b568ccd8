#!/usr/bin/env python3
"""Print the RTL core's cycles per instruction on the bench programs (as `hermes rtl cpi` does)."""
from __future__ import annotations

import sys

from hermes.cli import main

if __name__ == "__main__":
    sys.exit(main(["rtl", "cpi", *sys.argv[1:]]))
