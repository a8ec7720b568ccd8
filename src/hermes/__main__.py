"""Lets ``python -m hermes`` run the ``hermes`` command."""
import sys

from .cli import main

sys.exit(main())
