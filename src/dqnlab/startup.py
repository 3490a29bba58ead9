"""The start of a command-line script: its heavy imports (torch, Lightning, matplotlib) without garbage collection.

Importing torch and Lightning creates ~400k objects; the cyclic collector would scan them many times over while
they are created (about 1.5 s of CPU of ``scripts/evaluate.py``'s 5). They live as long as the process, so the
collector is off while they are imported and, in a script's own process, they are frozen: later collections skip
them. ``train.py`` does the same around Hydra's start.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_gc(freeze: bool = True) -> Iterator[None]:
    """Turn the cyclic garbage collector off for the block, then (``freeze``) exempt what the block created.

    Args:
        freeze: Move every object alive at the block's end to the permanent generation. Only for a script's own
            process: a caller that imports the script (a test calling its ``main(argv)``) keeps its own garbage
            collectable.

    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()
