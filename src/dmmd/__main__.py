"""`python -m dmmd` and the `dmmd` command (pyproject's entry point is `entry`).

Ctrl-C (SIGINT) while the command's modules load (torch takes seconds) ends with one line,
`interrupted`, and exit code 130, as it does during a command. SIGINT is held back during those
imports and looked at after them: a KeyboardInterrupt raised inside a library's import left it half
loaded (numpy then fails with "cannot load module more than once per process", torch may abort,
a RecursionError was seen).
"""

import signal
import sys

_hold = hasattr(signal, "pthread_sigmask") and signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _hold:  # not where SIGINT is ignored (nohup, &)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
try:
    from dmmd.cli import main
finally:
    if _hold and signal.SIGINT in signal.sigpending():
        print("interrupted", file=sys.stderr)
        sys.exit(130)  # with SIGINT still held: it is never raised inside a half-loaded module
    if _hold:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def entry() -> int:
    try:
        return main()
    except KeyboardInterrupt:  # before a command starts (argument parsing); main catches it after
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(entry())
