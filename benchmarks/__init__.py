"""cellgate's benchmark suite: what routing costs, as ratios against baselines.

Run it from the repository root::

    python -m benchmarks run [--backend sqlite|mariadb|postgresql]
                             [--transport memory|rabbit] [--quick]
                             [--json PATH] [--plot DIR]

See docs/benchmarks.md for what each figure means and the last results.
Timings live here, never as asserts in the unit tests.
"""
