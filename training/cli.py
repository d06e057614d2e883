"""`python -m training` / `mhc-train`: see training/trainer.py for what a run writes."""

from .trainer import main

__all__ = ["main"]
