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
import dataclasses
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Both torch-free and light: img2dataset's spawned workers re-import this file, so anything heavier
# (tcl.data.download, tcl.config) is imported in main.
from stages.common import StageParser, run_stage  # noqa: E402
from tcl.data.config import DISTRIBUTORS, ENCODE_FORMATS, RESIZE_MODES, DownloadSource  # noqa: E402

PROG = "download"
#: The options that set a DownloadSource field of the same name (the file's value, or DownloadSource's default).
_SETTINGS = ("prefix", "image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "encode_quality",
             "samples_per_shard", "processes", "threads", "timeout", "retries", "distributor", "sort_samples")


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{key}: cannot parse value {value!r}") from err


def _default(name: str) -> str:
    """``(value)`` of DownloadSource's default for a help text: the one set of defaults."""
    value = DownloadSource.__dataclass_fields__[name].default
    return f"({'on' if value is True else 'off' if value is False else value})"


def _parser() -> StageParser:
    # No option has a default of its own (argparse.SUPPRESS: absent unless given): the settings come from
    # download.sources.<--source> of --params, or else from DownloadSource's defaults.
    parser = StageParser(PROG, __doc__, argument_default=argparse.SUPPRESS)
    parser.add_argument("--params", type=Path, default=None, help="parameter file (with --source; params.yaml)")
    parser.add_argument("--source", default=None, help="entry of download.sources in --params to take settings from")
    parser.add_argument("--list", type=Path, dest="url_list",
                        help="TSV (optionally .gz) or parquet of (url, caption) pairs, either column order (required "
                             "unless --source)")
    parser.add_argument("--out", type=Path, help="folder for the shards (required unless --source)")
    parser.add_argument("--prefix", help="shard name prefix, e.g. gcc-train- or cc- (none)")
    parser.add_argument("--stats", type=Path, default=None, help="stats JSON to write (a DVC metrics file)")
    parser.add_argument("--serve-root", type=Path,
                        help="serve this folder on 127.0.0.1 and download relative paths in the list from it")
    parser.add_argument("--image-size", type=int, help="target side: the shorter one for keep_ratio and center_crop, "
                                                       f"the longer for border {_default('image_size')}")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, help=_default("resize_mode"))
    parser.add_argument("--resize-only-if-bigger", action=argparse.BooleanOptionalAction,
                        help=f"never upscale {_default('resize_only_if_bigger')}")
    parser.add_argument("--encode-format", choices=ENCODE_FORMATS, help=_default("encode_format"))
    parser.add_argument("--encode-quality", type=int,
                        help=f"jpg/webp quality, png compression {_default('encode_quality')}")
    parser.add_argument("--samples-per-shard", type=int, help=_default("samples_per_shard"))
    parser.add_argument("--processes", type=int, help=f"processes; 0: one per CPU core {_default('processes')}")
    parser.add_argument("--threads", type=int, help=f"download threads per process {_default('threads')}")
    parser.add_argument("--timeout", type=float, help=f"seconds per download {_default('timeout')}")
    parser.add_argument("--retries", type=int, help=f"retries per URL {_default('retries')}")
    parser.add_argument("--distributor", choices=DISTRIBUTORS,
                        help=f"img2dataset distributor {_default('distributor')}; pyspark and ray need their package")
    parser.add_argument("--sort-samples", action=argparse.BooleanOptionalAction,
                        help="rewrite each finished shard with its samples in key order, so that every run "
                             f"gives the same shards (img2dataset writes them as downloads finish) "
                             f"{_default('sort_samples')}")
    parser.add_argument("--overwrite", action="store_true", default=False,
                        help="delete this prefix's shards and start again (needed after changing the settings)")
    parser.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="any other img2dataset.download argument, YAML value (e.g. min_image_size=64)")
    return parser


def _located(url_list: Path, serve_root: Path | None) -> dict:
    """DownloadSource's ``root``/``list``/``serve`` for a list given on the command line, served from ``serve_root``."""
    if serve_root is None:
        return {"root": str(url_list.parent), "list": url_list.name, "serve": False}
    # a list outside the served folder: an absolute path stays as it is under root
    inside = url_list.relative_to(serve_root) if url_list.is_relative_to(serve_root) else url_list.absolute()
    return {"root": str(serve_root), "list": str(inside), "serve": True}


def build_source(args: argparse.Namespace) -> DownloadSource:
    """The one DownloadSource of this run: ``download.sources.<--source>`` of ``--params`` (or DownloadSource's
    defaults), with the options given on the command line replacing its fields; raises ConfigError."""
    from tcl.config import ConfigError, load_params

    given = vars(args)
    if args.source is not None:
        params_file = args.params or Path("params.yaml")
        sources = load_params(params_file).download.sources
        if args.source not in sources:
            raise ConfigError(f"--source {args.source!r} is not in download.sources of {params_file} "
                              f"(there: {', '.join(sources)})")
        base = sources[args.source]
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        if "url_list" in given or "serve_root" in given:
            fields.update(_located(given.get("url_list", base.url_list), given.get("serve_root", base.serve_root)))
    else:
        if "url_list" not in given or "out" not in given:
            raise ConfigError("--list and --out are required (or --source with --params)")
        fields = _located(args.url_list, given.get("serve_root"))
    if "out" in given:
        fields["out"] = str(args.out)
    fields.update({name: given[name] for name in _SETTINGS if name in given})
    fields["extra"] = {**fields.get("extra", {}), **dict(args.set)}  # --set adds to (or replaces) the file's
    return DownloadSource(**fields)


def _check_inputs(source: DownloadSource, args: argparse.Namespace) -> None:
    """What can be checked before downloading, without creating anything; raises DownloadError."""
    from tcl.data.download import DownloadError

    where = f"download.sources.{args.source}" if args.source else None
    if not source.url_list.is_file():
        key = f"{where}.list" if where else "--list"
        raise DownloadError(f"{key}: {source.url_list} not found (a TSV or parquet of (url, caption) pairs)")
    if source.serve_root is not None and not source.serve_root.is_dir():
        key = f"{where}.root" if where else "--serve-root"
        raise DownloadError(f"{key}: {source.serve_root} is not a folder")
    folders = [(Path(source.out), f"{where}.out" if where else "--out")]
    if args.stats is not None:
        folders.append((args.stats.parent, "--stats"))
    for folder, key in folders:
        existing = folder.absolute()
        while not existing.exists():  # the first folder on the way that exists must be a folder
            existing = existing.parent
        if not existing.is_dir():
            raise DownloadError(f"{key}: cannot create {folder}: {existing} is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    def work() -> int:
        from tcl.data.download import download_shards

        source = build_source(args)
        _check_inputs(source, args)  # before img2dataset starts (and creates the output folder)
        stats = download_shards(source, stats_path=args.stats, overwrite=args.overwrite)
        from pipelines.parent_run import stage_run

        with stage_run("download") as tracker:  # a child of the pipeline's MLflow run under make run / the flow
            tracker.set_tags({"download.source": args.source or str(source.url_list),
                              "download.out": str(Path(source.out))})
            tracker.log_metrics({k: v for k, v in stats.items()
                                 if isinstance(v, int | float) and not isinstance(v, bool)})
        print(f"{PROG}: {stats['samples_succeeded']} of {stats['samples_attempted']} samples in {stats['shards']} "
              f"shards ({stats['shard_bytes'] / 1e6:.1f} MB) under {Path(source.out)}; this run "
              f"{stats['samples_attempted_now']} samples, {stats['throughput_samples_per_s']:.1f} samples/s")
        return 0

    return run_stage(PROG, work, after_interrupt=lambda: "run the same command again to resume")


if __name__ == "__main__":  # required: img2dataset starts its workers with the spawn method
    sys.exit(main())
