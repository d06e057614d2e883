"""`python -m training`: the training command (training/cli.py)."""

import sys

from .cli import main

sys.exit(main())
