"""Lets ``python -m hermes.cli`` run the ``hermes`` command."""
import sys

from . import main

sys.exit(main())
