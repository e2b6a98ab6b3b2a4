"""Progress of long loops (checking, hashing and uploading 200,000 files): tqdm's bar, drawn on a terminal only.

tqdm's ``disable=None`` turns the bar off when its stream is not a TTY, so a log or a CI run gets no
carriage-return updates (the hand-drawn bar this replaces wrote 300 of them into one line of a log); the
summary lines the commands print stay.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


def bar(total: int, description: str, unit: str = "file", stream: TextIO | None = None) -> tqdm:
    """A context manager; ``update(n)`` as work completes."""
    return tqdm(total=total, desc=description, unit=unit, file=stream or sys.stderr, disable=None, leave=True,
                dynamic_ncols=True, mininterval=0.5)
