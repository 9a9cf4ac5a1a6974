"""A scoped torch thread count.

NOTE: the golden decoders run many tiny ops; with two threads on a 2-core machine that has
any other load, torch spends most of its time waking threads (measured: a golden beam search
over 40 demo sources took 1.0 s with 1 thread and 43 s with 2). They run single-threaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
