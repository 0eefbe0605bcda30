"""Preprocessing job entry points (thin: each forwards to ``ctpipe prep <kind>``).

``python -m data_prep.lodopab --src RAW --out SHARDS`` is the same as ``ctpipe prep lodopab ...``; inside a SLURM
array the task index/count default to ``$SLURM_ARRAY_TASK_ID`` / ``$SLURM_ARRAY_TASK_COUNT``.
"""
