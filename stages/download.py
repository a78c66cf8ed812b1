"""DVC stage: download a caption/URL list into webdataset shards with img2dataset
(CC3M and CC12M, as the kakaobrain/tcl README prepares them).

    python stages/download.py --list data/cc3m/Train_GCC-training.tsv --out data/gcc3m \\
        --prefix gcc-train- --stats metrics/download_gcc3m.json
    python stages/download.py --list data/cc12m/cc12m.tsv --out data/cc12m --prefix cc- --processes 16
    python stages/download.py --params params.yaml --source cc3m --stats metrics/download/cc3m.json

The list is a TSV (CC3M's caption<TAB>url, CC12M's url<TAB>caption, with or without a header) or a
parquet file; the column order is detected. Shards are <prefix>000000.tar, ... holding .jpg, .txt
and .json per sample; a shard gets its final name only when complete, so an interrupted run
(even a SIGKILL of this process alone: img2dataset's processes exit with it) resumes when the same
command is run again, downloading again the shards it wrote with transient failures.
--serve-root serves a folder on 127.0.0.1 for lists of relative paths (the built-in synthetic
corpus). --distributor pyspark or ray (when installed) hands
the shards to img2dataset's Spark or Ray distributor instead of local processes. With --params and
--source, the defaults of every option come from that entry of the file's download.sources section
(what the DVC stage download@<name> runs); options given on the command line still win.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{key}: cannot parse value {value!r}") from err


def _defaults_from_params(parser: argparse.ArgumentParser, params_file: Path, name: str) -> str | None:
    """Set the parser's defaults from ``download.sources.<name>`` of ``params_file``; an error message or None."""
    from tcl.config import ConfigError, load_params

    try:
        sources = load_params(params_file).download.sources
    except ConfigError as err:
        return str(err)
    if name not in sources:
        return f"--source {name!r} is not in download.sources of {params_file} (there: {', '.join(sources)})"
    src = sources[name]
    root = Path(src.root)
    parser.set_defaults(
        url_list=root / src.list, out=Path(src.out), prefix=src.prefix, serve_root=root if src.serve else None,
        image_size=src.image_size, resize_mode=src.resize_mode, resize_only_if_bigger=src.resize_only_if_bigger,
        encode_format=src.encode_format, encode_quality=src.encode_quality, samples_per_shard=src.samples_per_shard,
        processes=src.processes or os.cpu_count() or 1, threads=src.threads, timeout=src.timeout,
        retries=src.retries, distributor=src.distributor, sort_samples=src.sort_samples,
        set=list(src.extra.items()))
    return None


def _check_inputs(args: argparse.Namespace) -> str | None:
    """What can be checked before downloading, without creating anything: an error message or None."""
    where = f"download.sources.{args.source}" if args.source else None
    if not args.url_list.is_file():
        key = f"{where}.list" if where else "--list"
        return f"{key}: {args.url_list} not found (a TSV or parquet of (url, caption) pairs)"
    if args.serve_root is not None and not args.serve_root.is_dir():
        key = f"{where}.root" if where else "--serve-root"
        return f"{key}: {args.serve_root} is not a folder"
    folders = [(args.out, f"{where}.out" if where else "--out")]
    if args.stats is not None:
        folders.append((args.stats.parent, "--stats"))
    for folder, key in folders:
        existing = folder.absolute()
        while not existing.exists():  # the first folder on the way that exists must be a folder
            existing = existing.parent
        if not existing.is_dir():
            return f"{key}: cannot create {folder}: {existing} is a file, not a folder"
    return None


def main(argv: list[str] | None = None) -> int:
    # Imported here, not at the top: img2dataset's spawned workers re-import this file, and ``tcl``
    # would load torch and open_clip into each of them for nothing (about 2 s per worker).
    from tcl.data.download import DISTRIBUTORS, ENCODE_FORMATS, RESIZE_MODES, DownloadError, download_shards

    parser = argparse.ArgumentParser(prog="download", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--params", type=Path, default=None, help="parameter file (with --source)")
    parser.add_argument("--source", default=None, help="entry of download.sources in --params to take settings from")
    parser.add_argument("--list", type=Path, dest="url_list",
                        help="TSV (optionally .gz) or parquet of (url, caption) pairs, either column order (required "
                             "unless --source)")
    parser.add_argument("--out", type=Path, help="folder for the shards (required unless --source)")
    parser.add_argument("--prefix", default="", help="shard name prefix, e.g. gcc-train- or cc- (none)")
    parser.add_argument("--stats", type=Path, default=None, help="stats JSON to write (a DVC metrics file)")
    parser.add_argument("--serve-root", type=Path, default=None,
                        help="serve this folder on 127.0.0.1 and download relative paths in the list from it")
    parser.add_argument("--image-size", type=int, default=512,
                        help="target side: the shorter one for keep_ratio and center_crop, the longer for border (512)")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default="keep_ratio", help="(keep_ratio)")
    parser.add_argument("--resize-only-if-bigger", action=argparse.BooleanOptionalAction, default=True,
                        help="never upscale (on)")
    parser.add_argument("--encode-format", choices=ENCODE_FORMATS, default="jpg", help="(jpg)")
    parser.add_argument("--encode-quality", type=int, default=95, help="jpg/webp quality, png compression (95)")
    parser.add_argument("--samples-per-shard", type=int, default=10000, help="(10000)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="processes (all cores)")
    parser.add_argument("--threads", type=int, default=64, help="download threads per process (64)")
    parser.add_argument("--timeout", type=float, default=10, help="seconds per download (10)")
    parser.add_argument("--retries", type=int, default=0, help="retries per URL (0)")
    parser.add_argument("--distributor", choices=DISTRIBUTORS, default="multiprocessing",
                        help="img2dataset distributor (multiprocessing); pyspark and ray need their package")
    parser.add_argument("--sort-samples", action=argparse.BooleanOptionalAction, default=False,
                        help="rewrite each finished shard with its samples in key order, so that every run "
                             "gives the same shards (img2dataset writes them as downloads finish) (off)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete this prefix's shards and start again (needed after changing the settings)")
    parser.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="any other img2dataset.download argument, YAML value (e.g. min_image_size=64)")
    args = parser.parse_args(argv)
    if args.source is not None:
        error = _defaults_from_params(parser, args.params or Path("params.yaml"), args.source)
        if error:
            print(f"download: error: {error}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)  # again: the command line wins over the file
    if args.url_list is None or args.out is None:
        parser.error("--list and --out are required (or --source with --params)")
    error = _check_inputs(args)
    if error:  # before img2dataset starts (and creates the output folder)
        print(f"download: error: {error}", file=sys.stderr)
        return 2

    try:
        stats = download_shards(
            args.url_list, args.out, prefix=args.prefix, stats_path=args.stats, serve_root=args.serve_root,
            image_size=args.image_size, resize_mode=args.resize_mode,
            resize_only_if_bigger=args.resize_only_if_bigger, encode_format=args.encode_format,
            encode_quality=args.encode_quality, number_sample_per_shard=args.samples_per_shard,
            processes_count=args.processes, thread_count=args.threads, timeout=args.timeout, retries=args.retries,
            distributor=args.distributor, overwrite=args.overwrite, img2dataset_args=dict(args.set),
            sort_samples=args.sort_samples)
    except DownloadError as err:
        print(f"download: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("download: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    from pipelines.parent_run import stage_run

    with stage_run("download") as tracker:  # a child of the pipeline's MLflow run under make run / the flow
        tracker.set_tags({"download.source": args.source or str(args.url_list), "download.out": str(args.out)})
        tracker.log_metrics({k: v for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    print(f"download: {stats['samples_succeeded']} of {stats['samples_attempted']} samples in {stats['shards']} "
          f"shards ({stats['shard_bytes'] / 1e6:.1f} MB) under {args.out}; this run "
          f"{stats['samples_attempted_now']} samples, {stats['throughput_samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # required: img2dataset starts its workers with the spawn method
    sys.exit(main())
