"""DVC stage: one table of every evaluated benchmark, with the mean (markdown + JSON).

    python stages/report.py --inputs metrics/eval --baselines metrics/baselines --out metrics/report

Reads the <benchmark>.json files that stages/evaluate.py wrote (and, with --baselines, the
<kind>/<benchmark>.json files of the step0 / maskclip baselines, shown as extra mIoU columns) and
writes <out>/report.md and <out>/report.json. The means leave out training-split benchmarks (t_*).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageParser, run_stage  # noqa: E402

PROG = "report"


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(PROG, __doc__)
    parser.add_argument("--inputs", type=Path, default=Path("metrics/eval"), help="folder of <benchmark>.json")
    parser.add_argument("--baselines", type=Path, help="folder of <kind>/<benchmark>.json baseline results")
    parser.add_argument("--out", type=Path, default=Path("metrics/report"), help="output folder")
    args = parser.parse_args(argv)

    from tcl.atomic import write_json_atomic, write_text_atomic
    from tcl.eval.report import build_report, collect_baselines, collect_results, render_markdown

    def work() -> None:
        baselines = collect_baselines(args.baselines) if args.baselines else None
        report = build_report(collect_results(args.inputs), baselines)
        markdown = render_markdown(report)
        write_json_atomic(args.out / "report.json", report)
        write_text_atomic(args.out / "report.md", markdown)
        print(markdown, end="")
        print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")

    return run_stage(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
