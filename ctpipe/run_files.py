"""Names in a run folder's evaluation files, shared by the writer (the stages) and the reader (``report``)."""

from __future__ import annotations

EVAL_COUNTS = "n_samples.json"  # eval/<split>/n_samples.json: {model: samples scored}
ROLE_COLUMN = "role"            # every eval row: the model the stage trained, or a baseline scored beside it
TRAINED, BASELINE = "trained", "baseline"
