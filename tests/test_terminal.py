"""Progress bars only where one can be drawn: a terminal of 0 columns gets plain lines, like a file."""

import fcntl
import io
import os
import pty
import struct
import termios

from dmmd.runtime.terminal import bars_drawable


def _size(fd, rows, columns):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def test_a_terminal_with_columns_draws_bars_one_without_does_not():
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as stream:
            _size(slave, 24, 80)
            assert bars_drawable(stream)
            _size(slave, 0, 0)
            assert not bars_drawable(stream)
    finally:
        os.close(master)


def test_files_and_pipes_get_lines():
    assert not bars_drawable(io.StringIO())
    read, write = os.pipe()
    with os.fdopen(write, "w") as stream:
        assert not bars_drawable(stream)
    os.close(read)
