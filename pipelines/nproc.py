"""``python -m pipelines.nproc --params params.yaml``: print the train stage's process count for this machine.

The train stage's command in ``dvc.yaml`` is ``torchrun --nproc-per-node $(python -m pipelines.nproc ...)``:
``pipeline.nproc_per_node`` is a number, or ``auto`` (the default), which becomes this machine's GPU
count and 1 on a machine without GPUs. torchrun's own ``auto`` is not used: without a GPU it starts one
process per CPU core. A bad parameter file is one line on stderr and exit status 2 (the stage then fails
before torchrun starts).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.runner import run_command
from tcl.config import load_params

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.nproc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (params.yaml)")
    args = parser.parse_args(argv)
    return run_command("nproc", lambda: print(load_params(args.params).pipeline.local_world_size()))

if __name__ == "__main__":
    sys.exit(main())
