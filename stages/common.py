"""What every stage command line (``stages/*.py``) shares: its argument parser and its error handling.

:class:`StageParser`: ``--help`` shows the stage's module docstring (usage examples included), bad
arguments end in one line, ``<stage>: error: ... (see --help)``, exit status 2, and
``--params``/``-S``/``--set`` are declared once for every stage (``-S``/``--set`` by
:func:`pipelines.overrides.add_override_arguments`, which ``pipelines/`` uses too).

:func:`run_stage` (:func:`pipelines.runner.run_command`, which the ``pipelines/`` commands use too): runs a
stage's work and turns the failures a user can cause or fix into one line
on stderr instead of a traceback — any :class:`tcl.errors.TCLError` (bad parameters, missing or
hostile input files, data problems) exit 2, a full disk (:class:`tcl.atomic.DiskFullError`, raised by
every atomic output write) exit 1, Ctrl-C exit 130. A ``TCLError`` that sets ``exit_status`` (e.g.
:class:`tcl.tracking.registry.RegistryError`: the tracking server failed, rerun later) exits with
that instead of 2. Anything else is a bug and keeps its traceback. Stages catch nothing themselves:
the library turns the failures a user can cause into ``TCLError`` where they happen.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipelines.overrides import add_override_arguments
from pipelines.runner import CommandParser
from pipelines.runner import run_command as run_stage

__all__ = ["StageParser", "add_override_arguments", "run_stage"]

# The one place this is set for the stages (every stage imports this module before torch): with 2
# threads on shared cores OpenMP's spin-waiting made CPU training ~3x slower (measured), and it is read
# when torch loads its OpenMP runtime. A value the user exported wins. (pipelines.overrides, imported
# above, does not import torch.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class StageParser(CommandParser):
    """A stage's parser: :class:`pipelines.runner.CommandParser` with the parameter options."""

    def add_params_arguments(self, steps_key: str | None = None) -> None:
        """``--params FILE`` and ``-S/--set KEY=VALUE``; with ``steps_key``, also ``--steps N`` as a
        shorthand for ``--set <steps_key>=N``. Read the result with :meth:`load_params`."""
        self.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (params.yaml)")
        add_override_arguments(self)
        if steps_key is not None:
            self.add_argument("--steps", type=int, help=f"shorthand for --set {steps_key}=N")
            self.set_defaults(_steps_key=steps_key)

    @staticmethod
    def load_params(args: argparse.Namespace):
        """The validated parameters of ``--params`` with the ``--set`` items (and the one ``--steps``
        stands for) applied; raises ``tcl.errors.ConfigError``."""
        from tcl.config import parse_overrides, validate_overrides

        steps_key = getattr(args, "_steps_key", None)
        extra = [f"{steps_key}={args.steps}"] if steps_key and args.steps is not None else []
        return validate_overrides(args.params, parse_overrides([*args.overrides, *extra]))
