"""DVC stage: convert COCO-Stuff-164k raw label maps into COCO-Object label maps
(as kakaobrain/tcl bc2b551, convert_dataset/convert_coco_object.py, does).

    python stages/convert_coco_object.py --root data/coco_stuff164k --out data/coco_object

Thing classes become 1..80, stuff and unlabeled become 0 (background). Already converted files are
skipped, so an interrupted run resumes; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcl.data.coco_object import SPLITS, COCOObjectError, convert_coco_object  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, required=True,
                        help="COCO-Stuff-164k root holding annotations/{train2017,val2017}/*.png")
    parser.add_argument("--out", type=Path, required=True, help="output root (annotations/<split>/...)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to convert (both)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (all cores)")
    parser.add_argument("--expected-count", type=int, default=None,
                        help="number of raw maps that must be found (123287 for the full train+val set)")
    args = parser.parse_args(argv)

    bar = tqdm(unit="map", desc="COCO-Object", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        counts = convert_coco_object(args.root, args.out, args.splits, args.workers, args.expected_count, progress)
    except COCOObjectError as err:
        bar.close()
        print(f"convert_coco_object: error: {err}", file=sys.stderr)
        return 2
    bar.close()
    print(f"converted {counts['converted']}, already done {counts['skipped']}, total {counts['total']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
