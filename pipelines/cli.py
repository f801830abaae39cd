"""The command-line contract of every entry point (tools/, trainer.run,
benchmarks/): a failure prints one line, ``PROG: error: what and where; what
to do``, and exits non-zero, without a traceback. ``--debug`` (or
AUGSSL_DEBUG=1) lets the exception through with its traceback instead.

Anticipated failures (bad paths, bad values, damaged files, a full disk) are
raised as ValueError / OSError / RuntimeError / LookupError with messages that
name the thing; anything else is a bug in this project, reported as an internal
error that asks for --debug and a report. Ctrl-C exits 130 with one line.

Also here, because every tool needs them: ``shown`` (a user's value quoted in a
message, bounded: a YAML alias bomb must not become a 300 MB message),
``Range`` (the documented finite range of a numeric option, checked before any
work) and ``one_line`` (a library's multi-line error reduced to its one line).
"""

from __future__ import annotations

import argparse
import math
import os
import reprlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

ANTICIPATED = (ValueError, OSError, RuntimeError, LookupError)
MESSAGE_LIMIT = 600  # characters of one error line; the rest is cut, marked "..."


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
            print(f"{prog}: error: {one_line(str(e))}", file=sys.stderr)
        else:
            print(f"{prog}: internal error ({type(e).__name__}: {one_line(str(e))}); run again "
                  "with --debug for the traceback, and please report it", file=sys.stderr)
        return 1


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message as one line of at most ``limit`` characters.

    Libraries wrap errors in several lines: torch's DataLoader re-raises a
    worker's exception with the worker's whole traceback in the message ("Caught
    X in DataLoader worker process 0. Original Traceback ...": the last line is
    the error itself); DALI's "Critical error in pipeline:" is followed by the
    operator's error and a notice that the pipeline is no longer valid. Keep the
    line that says what went wrong."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return ""
    if any("Original Traceback" in ln for ln in lines):
        line = lines[-1]
    elif lines[0].startswith("Critical error"):
        # DALI: "Error in CPU operator `X`," ... "encountered:" then the reason
        op = next((ln.rstrip(",") for ln in lines if ln.startswith("Error in")), "")
        after = [ln for i, ln in enumerate(lines) if i and lines[i - 1] == "encountered:"]
        reason = after[0] if after else next(
            (ln for ln in lines[1:] if not ln.startswith(("Critical error", "Current pipeline",
                                                           "which was used", "Stacktrace"))),
            "")
        line = ": ".join(x for x in (op or lines[0].rstrip(":"), reason) if x)
    else:
        line = lines[0] + (" ..." if len(lines) > 1 else "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 120, 120, 40


def shown(value, limit: int = 200) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters, whatever its size
    or nesting (reprlib never walks past its depth and lengths)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class Range:
    """A finite interval for a numeric option; ``zero``, when set, also admits 0 as a
    sentinel and says what it means (e.g. "the method's default")."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    zero: str | None = None
    integer: bool = False

    def admits(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.zero is not None and value == 0:
            return True
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        def num(x):
            return f"{int(x)}" if self.integer or float(x).is_integer() else f"{x:g}"
        text = f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}" \
               f"{')' if self.hi_open else ']'}"
        return text + (f", or 0 ({self.zero})" if self.zero is not None else "")

    def check(self, name: str, value, where: str | None = None) -> None:
        """ValueError naming ``where``, the key, the value and the range."""
        if not self.admits(value):
            kind = "a whole number" if self.integer else "a finite number"
            raise ValueError(f"{where + ': ' if where else ''}{name}={shown(value)} is out of "
                             f"range: expected {kind} in {str(self)}")


def ranged(rng: Range, flag: str):
    """An argparse ``type=`` that parses a number and checks it against ``rng``:
    a bad value is argparse's one usage line (exit 2) naming the flag and the range."""
    def parse(text: str):
        try:
            value = int(text) if rng.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{shown(text)} is not {'a whole number' if rng.integer else 'a number'}; "
                f"expected one in {rng}") from None
        if not rng.admits(value):
            raise argparse.ArgumentTypeError(f"{shown(text)} is out of range: expected "
                                             f"{'a whole number' if rng.integer else 'a finite number'}"
                                             f" in {rng}")
        return value
    parse.__name__ = flag.lstrip("-").replace("-", "_")  # argparse names the type in messages
    return parse


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     *names: str) -> None:
    """parser.error (exit 2, before any work) for each of ``names`` that is not > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, not {value}")
