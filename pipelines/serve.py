"""Serve the ``tcl-pipeline`` flow as a scheduled Prefect deployment from this process (``flow.serve``).

    prefect server start                                   # another terminal; UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.serve                              # deployment tcl-pipeline/nightly, 03:00 every day
    python -m pipelines.serve --name sweep --cron "0 */6 * * *" -S train.steps=400

The deployment runs in this process, one flow run at a time (two runs in one checkout would race
for params.yaml); trigger extra runs from the UI ("Run" on the deployment) or with
``prefect deployment run tcl-pipeline/nightly``. Ctrl-C stops serving.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--name", default="nightly", help="deployment name (nightly)")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule, cron syntax (03:00 daily); '' for none")
    parser.add_argument("--timezone", default="UTC", help="timezone of the schedule (UTC)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="default parameter override of the scheduled runs (repeatable)")
    parser.add_argument("--overrides-file", help="default overrides file of the scheduled runs")
    args = parser.parse_args(argv)

    from prefect.client.schemas.schedules import CronSchedule

    from .flow import tcl_pipeline

    schedules = [CronSchedule(cron=args.cron, timezone=args.timezone)] if args.cron else []
    tcl_pipeline.serve(name=args.name, schedules=schedules, limit=1, tags=["tcl"],
                       parameters={"overrides": args.overrides, "overrides_file": args.overrides_file},
                       description="The TCL pipeline (dvc.yaml) stage by stage through DVC; see README.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
