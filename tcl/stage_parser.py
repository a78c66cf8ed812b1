"""The argument parser of the stage command lines (``stages/*.py``).

``--help`` shows the stage's module docstring (usage examples included), and bad arguments end in
one line, ``<stage>: error: ... (see --help)``, with exit status 2 — the same shape as every other
failure of a stage. A stage built on it also reports a full disk (:class:`tcl.atomic.DiskFullError`,
raised by every atomic output write) as one line, ``<stage>: error: no space left on device writing
<file> (...)``, exit status 1, instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["StageParser"]


class StageParser(argparse.ArgumentParser):
    def __init__(self, prog: str, doc: str, **kwargs) -> None:
        super().__init__(prog=prog, description=doc.split("\n\n")[0], epilog=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        _report_disk_full_as(prog)

    def add_params_arguments(self, steps_key: str | None = None) -> None:
        """``--params FILE`` and ``-S/--set KEY=VALUE`` (repeatable, YAML values, as ``dvc exp run -S``);
        with ``steps_key``, also ``--steps N`` as a shorthand for ``--set <steps_key>=N``. Read the
        result with :meth:`load_params`."""
        self.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (params.yaml)")
        self.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override one parameter for this run only, e.g. -S train.lr=0.0003 (repeatable)")
        if steps_key is not None:
            self.add_argument("--steps", type=int, help=f"shorthand for --set {steps_key}=N")
            self.set_defaults(_steps_key=steps_key)

    @staticmethod
    def load_params(args: argparse.Namespace):
        """The validated parameters of ``--params`` with the ``--set`` items (and the one ``--steps``
        stands for) applied; raises ``tcl.config.ConfigError``."""
        from tcl.pipeline.overrides import parse_overrides, validate_overrides

        steps_key = getattr(args, "_steps_key", None)
        extra = [f"{steps_key}={args.steps}"] if steps_key and args.steps is not None else []
        return validate_overrides(args.params, parse_overrides([*args.overrides, *extra]))

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _report_disk_full_as(prog: str) -> None:
    """Make an uncaught :class:`~tcl.atomic.DiskFullError` one line on stderr (the exit status stays 1).

    One place for every stage: the error reaches the top of any stage's ``main`` the same way, and the
    stage's own handlers stay about its own input.
    """
    from .atomic import DiskFullError

    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if isinstance(value, DiskFullError):
            print(f"{prog}: error: {value}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook
