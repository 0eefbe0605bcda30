"""Full-size speed comparisons against peers (``python -m benchmarks.fbp``, ``python -m benchmarks.dataloader``).

Results go to ``results/benchmarks.csv`` (one row per benchmark, implementation, device and batch);
each script replaces only its own rows, atomically.
"""
