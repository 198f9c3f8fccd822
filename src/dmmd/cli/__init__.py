"""The `dmmd` command line: train, sample, calibrate, evaluate, compare. A thin layer over the library.

Mistakes in the user's input end in a one-line `error: ...` on stderr and exit code 2
(pass --debug for the traceback).
"""

from __future__ import annotations

import argparse
import sys

from dmmd.cli import calibrate, compare, evaluate, inpaint, plot, presets, sample, study, train, train_autoencoder
from dmmd.config import ConfigError
from dmmd.data.datasets import DataError
from dmmd.methods.sample import SamplerMismatch
from dmmd.runtime.checkpoint import CheckpointError
from dmmd.runtime.memory import ResourceError
from dmmd.runtime.runfolder import RunFolderError, command_scope, describe_os_error
from dmmd.runtime.signals import Interrupted, terminate_raises
from dmmd.training.loop import TrainingDiverged
from dmmd.version import __version__

EXIT_USAGE = 2
# one module per command, each with add_parser(sub) and run(args); listed in `dmmd --help` in this order
COMMANDS = {"presets": presets, "plot": plot, "train": train, "train-autoencoder": train_autoencoder, "sample": sample,
            "inpaint": inpaint, "calibrate": calibrate, "compare": compare, "study": study, "evaluate": evaluate}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmmd", description="Diffusion MMD gradient flow (DMMD): train a "
                                     "noise-conditional MMD discriminator and generate by its gradient flow.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"dmmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # locks and temporary folders a command claims are released however it ends; SIGTERM unwinds like SIGINT
        with terminate_raises(), command_scope():
            return COMMANDS[args.command].run(args)
    except (ConfigError, DataError, CheckpointError, SamplerMismatch, TrainingDiverged, RunFolderError,
            ResourceError) as err:
        if args.debug:
            raise
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, whatever the message
        return EXIT_USAGE
    except Interrupted as stop:  # SIGTERM (or SIGINT in training): said where things stand
        print(stop, file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a read-only or vanished folder met during the command
        text = describe_os_error(err)
        if args.debug or text is None:
            raise
        print(f"error: {text}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
