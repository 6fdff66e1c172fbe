"""What client.py and the container probe share on their command lines: one-line usage errors, --timeout's
seconds, and output whatever stdout and stderr are.

A usage error is one line; an error goes to stderr, or nowhere when stderr is closed or full (the exit status
still says what happened); a result that stdout cannot take is one line on stderr. It imports no thriftpy2, which
the probe must not load.
"""

import argparse
import os
import sys
from typing import NoReturn

from servicekit.exit_statuses import EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and status 2 (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog.split()[-1]}: {self.explained(message)} (see --help)\n")

    def explained(self, message: str) -> str:
        """argparse's `message`, with what a program adds to it."""
        return message


def seconds(text: str) -> float:
    """--timeout: a number of seconds above 0, at most an hour."""
    try:
        if not text.isascii() or "_" in text:  # float() takes other scripts' digits and 1_0, as integers here do not
            raise ValueError
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} must be above 0 and at most 3600")
    return value


def to_stderr(line: str) -> None:
    """One line on stderr, or nowhere if stderr cannot take it: the exit status still says what happened.

    Never on stdout, which holds data: print(file=None) writes there when stderr was closed (2>&-).
    """
    if sys.stderr is None:
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # a full disk, a reader gone (Python's flush at exit ignores stderr's errors, unlike stdout's)
        pass


def print_result(text: str) -> bool:
    """Print a command's output; False, after one line on stderr, if stdout cannot take it.

    Characters stdout's encoding lacks are escaped, never a traceback.
    """
    if sys.stdout is None:  # started with stdout closed (>&-): nowhere to show it, as with > /dev/null
        return True
    encoding = sys.stdout.encoding or "utf-8"
    try:
        print(text.encode(encoding, "backslashreplace").decode(encoding), flush=True)
        return True
    except OSError as error:
        # Nothing more can be shown: stdout now goes nowhere, so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(error, BrokenPipeError):
            return True  # a reader that stops early (`| head`) is not an error
        to_stderr(f"error: cannot write the result ({error.strerror}); the call itself succeeded")
        return False
