"""face-pipeline benchmarks (``make bench``, ``python -m bench``): figures, never timed assertions.

Everything is measured as ratios within one run, with medians over repeats, because the
machines it runs on are shared and noisy. See docs/performance.md.
"""
