"""The command-line contract of every entry point (tools/, trainer.run,
benchmarks/): a failure prints one line, ``PROG: error: what and where; what
to do``, and exits non-zero, without a traceback. ``--debug`` (or
AUGSSL_DEBUG=1) lets the exception through with its traceback instead.

Anticipated failures (bad paths, bad values, damaged files, a full disk) are
raised as ValueError / OSError / RuntimeError / LookupError with messages that
name the thing; anything else is a bug in this project, reported as an internal
error that asks for --debug and a report. Ctrl-C exits 130 with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

ANTICIPATED = (ValueError, OSError, RuntimeError, LookupError)


def add_debug(parser: argparse.ArgumentParser) -> None:
    """Documents --debug in --help (``run`` takes it out of argv before parsing)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on failure, show the Python traceback instead of one line")


def run(main: Callable[[list[str]], int | None], prog: str, argv: list[str] | None = None) -> int:
    """``main(argv)`` under the contract above; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("AUGSSL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the contract: one line, never a traceback
        if debug:
            raise
        if isinstance(e, ANTICIPATED):
            print(f"{prog}: error: {e}", file=sys.stderr)
        else:
            print(f"{prog}: internal error ({type(e).__name__}: {e}); run again with --debug "
                  "for the traceback, and please report it", file=sys.stderr)
        return 1


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     *names: str) -> None:
    """parser.error (exit 2, before any work) for each of ``names`` that is not > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, not {value}")
