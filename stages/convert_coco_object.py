"""DVC stage: convert COCO-Stuff-164k raw label maps into COCO-Object label maps
(as kakaobrain/tcl bc2b551, convert_dataset/convert_coco_object.py, does).

    python stages/convert_coco_object.py --root data/coco_stuff164k --out data/coco_object

Thing classes become 1..80, stuff and unlabeled become 0 (background). Already converted files are
skipped, so an interrupted run resumes; outputs are written atomically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageParser, run_stage  # noqa: E402
from tcl.data.coco_object import SPLITS, convert_coco_object  # noqa: E402

PROG = "convert_coco_object"


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(PROG, __doc__)
    parser.add_argument("--root", type=Path, required=True,
                        help="COCO-Stuff-164k root holding annotations/{train2017,val2017}/*.png")
    parser.add_argument("--out", type=Path, required=True, help="output root (annotations/<split>/...)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to convert (both)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (all cores)")
    parser.add_argument("--expected-count", type=int, default=None,
                        help="number of raw maps that must be found (123287 for the full train+val set)")
    args = parser.parse_args(argv)

    bars: list[tqdm] = []  # created on the first report: a check that fails early prints no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="map", desc="COCO-Object", dynamic_ncols=True))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    def work() -> None:
        try:
            counts = convert_coco_object(args.root, args.out, args.splits, args.workers, args.expected_count,
                                         progress)
        finally:  # before any error line: the bar's last redraw must not end up after it
            for bar in bars:
                bar.close()
        print(f"converted {counts['converted']}, already done {counts['skipped']}, total {counts['total']}")

    return run_stage(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
