#!/usr/bin/env python3
"""Synthesize the RTL device top with yosys: LUTs, FFs, BRAMs, path depth (`hermes rtl synth`)."""
from __future__ import annotations

import sys

from hermes.cli import main

if __name__ == "__main__":
    sys.exit(main(["rtl", "synth", *sys.argv[1:]]))
