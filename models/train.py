"""`python -m models.train`: the training command under its original name (the code is in training/)."""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
