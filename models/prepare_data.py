"""`python -m models.prepare_data`: data preparation under its original name (the code is in corpus/prepare.py)."""

import sys

from corpus.prepare import main

if __name__ == "__main__":
    sys.exit(main())
