"""The argument parser of the stage command lines (``stages/*.py``).

``--help`` shows the stage's module docstring (usage examples included), and bad arguments end in
one line, ``<stage>: error: ... (see --help)``, with exit status 2 — the same shape as every other
failure of a stage.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["StageParser"]


class StageParser(argparse.ArgumentParser):
    def __init__(self, prog: str, doc: str, **kwargs) -> None:
        super().__init__(prog=prog, description=doc.split("\n\n")[0], epilog=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
