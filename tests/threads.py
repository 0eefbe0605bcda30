"""One torch intra-op thread for the tests that train or run convolutions on CI's two shared cores."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Two shared cores: one intra-op thread is ~10x faster than two oversubscribed ones at these sizes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
