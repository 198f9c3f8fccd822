"""Whether a progress bar can be drawn: on a terminal wide enough to show one. Elsewhere (a file,
a pipe, a terminal reporting 0 columns) commands print plain lines instead, so progress is visible
wherever the output goes."""

from __future__ import annotations

import os
import sys

MIN_COLUMNS = 20  # narrower than this, tqdm draws nothing useful


def bars_drawable(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns >= MIN_COLUMNS
    except (OSError, ValueError, AttributeError):  # no file descriptor, or not a terminal after all
        return False
