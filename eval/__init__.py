"""Evaluation: our models in lm-evaluation-harness (model `mhc`) and the paper's eight-benchmark suite.

`python -m eval ...` is lm-eval's own command line with the `mhc` model registered;
`python -m eval.run --checkpoint DIR --suite paper --out FILE` is the workflow's entry point.
"""
