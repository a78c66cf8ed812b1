"""Serve the ``tcl-pipeline`` flow as a scheduled Prefect deployment from this process (``flow.serve``).

    prefect server start                                   # another terminal; UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.serve                              # deployment tcl-pipeline/nightly, 03:00 every day
    python -m pipelines.serve --name sweep --cron "0 */6 * * *" -S train.steps=400

The deployment runs in this process, one flow run at a time (two runs in one checkout would race
for params.yaml); trigger extra runs from the UI ("Run" on the deployment) or with
``prefect deployment run tcl-pipeline/nightly``. Ctrl-C stops serving. The overrides are validated
against params.yaml first: a bad one is one line on stderr and exit status 2, nothing is served.

Prefect names a deployment by flow and name: serving a name that ``prefect.yaml`` deploys
(``nightly-pool``, ``steps-sweep-pool``) would silently replace that deployment, and ``prefect deploy
--all`` this one, so such a name is refused (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipelines.overrides import add_override_arguments

PROG = "serve"


def pool_deployment_names(prefect_yaml: Path) -> list[str]:
    """The deployment names ``prefect deploy --all`` creates from ``prefect_yaml`` (none if it is missing)."""
    try:
        data = yaml.safe_load(prefect_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    return [str(d["name"]) for d in data.get("deployments") or [] if isinstance(d, dict) and "name" in d]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--name", default="nightly", help="deployment name (nightly)")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule, cron syntax (03:00 daily); '' for none")
    parser.add_argument("--timezone", default="UTC", help="timezone of the schedule (UTC)")
    add_override_arguments(parser, "default parameter override of the scheduled runs (repeatable)")
    parser.add_argument("--overrides-file", help="default overrides file of the scheduled runs")
    args = parser.parse_args(argv)

    from prefect.client.schemas.schedules import CronSchedule

    from tcl.errors import TCLError

    from .flow import PROJECT_ROOT, checked_overrides, tcl_pipeline

    if args.name in (taken := pool_deployment_names(PROJECT_ROOT / "prefect.yaml")):
        print(f"{PROG}: error: deployment name {args.name!r} is one of prefect.yaml's ({', '.join(taken)}); "
              "serving it would replace that deployment (and prefect deploy --all this one): pick another --name",
              file=sys.stderr)
        return 2
    try:  # as each scheduled run will, so that a typo fails now, not at 03:00
        checked_overrides(PROJECT_ROOT, args.overrides, args.overrides_file)
    except TCLError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    schedules = [CronSchedule(cron=args.cron, timezone=args.timezone)] if args.cron else []
    tcl_pipeline.serve(name=args.name, schedules=schedules, limit=1, tags=["tcl"],
                       parameters={"overrides": args.overrides, "overrides_file": args.overrides_file},
                       description="The TCL pipeline (dvc.yaml) stage by stage through DVC; see README.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
