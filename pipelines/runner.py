"""The one way a command line of this project ends: its work's exit status, or one line for its failure.

:func:`run_command` runs a command's work and turns the failures a user can cause or fix into one line
on stderr instead of a traceback: a :class:`tcl.errors.TCLError` exit 2 (or the error's
``exit_status``), a full disk (:class:`tcl.atomic.DiskFullError`) exit 1, Ctrl-C exit 130. Anything
else is a bug and keeps its traceback. Every stage (``stages/common.py`` re-exports it as
``run_stage``) and the ``pipelines/`` commands end through it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["CommandParser", "run_command"]


class CommandParser(argparse.ArgumentParser):
    """The argument parser of every command line here: the module docstring's first paragraph as the
    description and the whole docstring as the epilog, and a bad argument as one line
    ``<label>: error: ... (see --help)``, exit 2 (``label`` defaults to ``prog``)."""

    def __init__(self, prog: str, doc: str, label: str | None = None, **kwargs) -> None:
        super().__init__(prog=prog, description=doc.split("\n\n")[0], epilog=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.label = label or prog

    def error(self, message: str):
        print(f"{self.label}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def run_command(prog: str, work: Callable[[], int | None], *,
                after_disk_full: Callable[[], str] | None = None,
                after_interrupt: Callable[[], str] | None = None) -> int:
    """``work()``'s exit status (``None`` counts as 0), or that of the one line printed for its failure.

    ``after_disk_full`` may return a sentence appended to the disk-full line (e.g. which checkpoint
    survives and how to resume from it); ``after_interrupt`` one appended to ``<prog>: interrupted``
    (e.g. that the output was left as it was).
    """
    from tcl.atomic import DiskFullError
    from tcl.errors import TCLError

    try:
        status = work()
    except DiskFullError as err:
        extra = after_disk_full() if after_disk_full else ""
        print(f"{prog}: error: {err.reason} writing {err.filename} ({err.fix}{'; ' + extra if extra else ''})",
              file=sys.stderr)
        return 1
    except TCLError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_status", 2)
    except KeyboardInterrupt:
        extra = after_interrupt() if after_interrupt else ""
        print(f"{prog}: interrupted{': ' + extra if extra else ''}", file=sys.stderr)
        return 130
    return 0 if status is None else status
