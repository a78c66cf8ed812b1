"""Caption/URL lists → webdataset shards through img2dataset (CC3M, CC12M, as the kakaobrain/tcl README
prepares them).

img2dataset does the downloading, resizing, encoding, sharding and scale-out (multiprocessing,
pyspark or ray); this module only puts a thin, resumable frame around it:

* **Any column order.** CC3M ships ``caption<TAB>url``, CC12M ``url<TAB>caption``, with or without a
  header line. The URL column is found by name (``url``) or else by content, and the list is
  normalised to a parquet file with known column names, so no ``sed`` on multi-GB files is needed.
  The normalised file is parquet rather than TSV because img2dataset's TSV reader honours ``"``
  quoting: it silently turns the caption ``"the best" sofa`` into ``the best sofa``.
* **Prefixed final names, resumable.** img2dataset names shards ``000000.tar`` and, in its
  ``incremental`` mode, skips a shard whose ``000000_stats.json`` exists; it writes that file only
  after the tar is closed. It therefore writes into a work folder beside the shards
  (``.<prefix>img2dataset/``), and a shard is renamed (``os.replace``) to ``<prefix>000000.tar``
  only once its stats file exists and parses, both while the download runs and when the next run
  starts. A shard under its final name is therefore always complete, and an interrupted run
  resumes where it stopped. The work folder keeps the per-shard stats and img2dataset's per-sample
  parquet (URL, status, error) of every shard.
* **Nothing lost to an interruption.** img2dataset's worker processes die with the process that
  started them (a thread in each watches the parent PID): a SIGKILL of the stage alone (an OOM
  kill, a dropped SSH session) used to leave them finishing their shards against a dead loopback
  server, recording "Connection refused" for every remaining sample. And whatever an interrupted
  run wrote is suspect: the shards a run is about to download are journalled (``unsettled.txt``),
  the journal is cleared only when img2dataset returns normally, and the next run deletes and
  downloads again every journalled shard whose stats show a *transient* failure (connection
  refused or reset, timeout, HTTP 5xx/408/429: :func:`is_transient`). Transient failures of a run
  that finished, and permanent ones (404, not an image) of any run, are final and counted
  (``failed_transient`` counts the former).
* **Optionally the same bytes on every run.** img2dataset's threads append samples as their
  downloads finish; with ``sort_samples`` the shard is instead written to its final name with the
  samples in key order and zeroed member times, so the training stream, and a training run,
  repeat exactly from the list alone (the built-in world uses it; for CC12M it costs one more pass
  over the data).
* **Local files through the same path.** With ``serve`` (a DownloadSource field), relative paths in the list are
  served by a loopback HTTP server for the duration of the download, so the built-in synthetic
  corpus exercises exactly the code path that CC3M does.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import math
import os
import re
import signal
import sys
import tarfile
import tempfile
import threading
import time
import types
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..atomic import write_text_atomic
from ..compat.distributors import check_engine, distributor_engine
from .config import DISTRIBUTORS, ENCODE_FORMATS, IMG2DATASET_RESERVED, RESIZE_MODES, DownloadSource
from .url_lists import DownloadError, read_url_list, rewrite_relative_urls, serve_directory

__all__ = ["DownloadError", "DownloadSource", "download_shards", "is_transient", "read_url_list", "serve_directory",
           "shard_name", "work_dir", "DISTRIBUTORS", "RESIZE_MODES", "ENCODE_FORMATS", "SHARD_DIGITS"]

SHARD_DIGITS = 6
_MAX_REASONS = 20
# Pass-through arguments that change how the job runs, not what the shards hold.
_RUNTIME_ARGS = {"enable_wandb", "wandb_project", "subjob_size", "max_shard_retry", "user_agent_token"}
# Not ``*.json``: img2dataset parses the shard id out of every ``*.json`` name in its output folder.
_SETTINGS_FILE = "settings.txt"
# Shards handed to img2dataset by a run that has not (yet) returned normally; see _forget_interrupted.
_JOURNAL_FILE = "unsettled.txt"
_INPUT_FILE = "_input.parquet"
# img2dataset's per-sample errors that say nothing about the URL itself: the same request may succeed later.
_TRANSIENT = re.compile(
    r"timed? ?out|connection (refused|reset|aborted)|remote end closed|broken pipe|incompleteread"
    r"|temporary failure|network is unreachable|errno (32|101|104|110|111|113)\b|HTTP Error (5\d\d|408|429)\b",
    re.IGNORECASE)
# Run first in every img2dataset pool worker (as ``exec(_DIE_WITH_PARENT, {"PARENT": pid})``; stdlib only, so a
# worker, which the pool restarts every 5 shards, does not import ``tcl`` and with it torch for nothing).
# A worker that outlived the process that started it would go on downloading into the work folder,
# against a loopback server that died with that process, and write its shards as complete.
# A thread watching the parent PID rather than prctl(PR_SET_PDEATHSIG): that signal follows the *thread*
# that started the process, and the pool starts replacement workers from a thread that exits in
# Pool.terminate, killing workers that hold the task queue's lock and so hanging terminate for ever.
_DIE_WITH_PARENT = """
import os, threading, time
def _watch_parent():
    while os.getppid() == PARENT:
        time.sleep(0.2)
    os._exit(1)
if os.getppid() != PARENT:  # the parent died while this process started
    os._exit(1)
threading.Thread(target=_watch_parent, name="tcl-watch-parent", daemon=True).start()
"""


def shard_name(prefix: str, index: int) -> str:
    """Final name of shard ``index``: ``prefix`` + 6-digit index + ``.tar`` (``gcc-train-000000.tar``)."""
    return f"{prefix}{index:0{SHARD_DIGITS}d}.tar"


def work_dir(output_dir: str | os.PathLike, prefix: str = "") -> Path:
    """img2dataset's own output folder for one prefix: hidden, so ``*.tar`` globs never see it."""
    return Path(output_dir) / f".{prefix}img2dataset"


# --------------------------------------------------------------------------- shards and stats

def _shard_index(stats_file: Path) -> int:
    return int(stats_file.name.split("_", 1)[0])


def _read_stats(stats_file: Path) -> dict | None:
    try:
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) and "count" in stats else None


def _sorted_shard(tar: Path, final: Path) -> None:
    """Write ``tar`` to ``final`` with its samples in key order and fixed member metadata, atomically.

    img2dataset writes a shard's samples in the order its download threads finish them, so two runs
    over one list give the same samples in other orders, and a training stream reading them sees other
    batches. Sorted (and with mtime 0), a shard's bytes depend on the list alone.
    """
    partial = final.with_name(f".{final.name}.partial")  # not *.tar: no glob of shards sees it
    with tarfile.open(tar) as source, tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as target:
        members = sorted((m for m in source.getmembers() if m.isfile()),
                         key=lambda m: (m.name.split(".", 1)[0], m.name))
        for member in members:
            data = source.extractfile(member).read()
            info = tarfile.TarInfo(member.name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            target.addfile(info, io.BytesIO(data))
    os.replace(partial, final)
    tar.unlink()


def _promote(work: Path, output_dir: Path, prefix: str, running: bool, sort_samples: bool = False) -> None:
    """Give every finished shard its final name (``sort_samples``: as a key-sorted copy, see
    :func:`_sorted_shard`); between runs, also forget shards that must be redone.

    A stats file that does not parse is being written (``running``) or was cut by a crash (between
    runs: redo the shard). A stats file whose shard is neither in the work folder nor under its final
    name means the final shard was deleted: redo it. A work tar without stats is a partial shard.
    """
    for stats_file in sorted(work.glob("*_stats.json")):
        index = stats_file.name.split("_", 1)[0]
        tar, final = work / f"{index}.tar", output_dir / shard_name(prefix, int(index))
        if _read_stats(stats_file) is None:
            if not running:
                stats_file.unlink(missing_ok=True)
            continue
        if tar.exists():
            if sort_samples:
                _sorted_shard(tar, final)
            else:
                os.replace(tar, final)
        elif not final.exists() and not running:
            stats_file.unlink(missing_ok=True)
            (work / f"{index}.parquet").unlink(missing_ok=True)
    if not running:
        for tar in work.glob("*.tar"):
            tar.unlink(missing_ok=True)


def _promote_while_running(work: Path, output_dir: Path, prefix: str, stop: threading.Event,
                           interval: float, sort_samples: bool) -> None:
    while not stop.wait(interval):
        with contextlib.suppress(OSError, tarfile.TarError):
            _promote(work, output_dir, prefix, running=True, sort_samples=sort_samples)


def _reason(message: str) -> str:
    # "cannot identify image file <_io.BytesIO object at 0x7f..>": one reason, not one per sample
    return re.sub(r" at 0x[0-9a-fA-F]+", "", message)


def is_transient(message: str) -> bool:
    """Whether an img2dataset per-sample error message may go away on another try (timeouts, refused or
    reset connections, HTTP 5xx, 408 and 429) rather than describe the URL (404, not an image)."""
    return _TRANSIENT.search(message) is not None


def _transient_failures(stats: Mapping[str, Any]) -> int:
    return sum(int(n) for message, n in stats.get("status_dict", {}).items()
               if message != "success" and is_transient(message))


def _forget_shard(work: Path, output_dir: Path, prefix: str, index: int) -> None:
    # the stats file first: a crash half-way leaves a shard without stats, which is redone anyway
    for path in (work / f"{index:0{SHARD_DIGITS}d}_stats.json", work / f"{index:0{SHARD_DIGITS}d}.parquet",
                 work / f"{index:0{SHARD_DIGITS}d}.tar", output_dir / shard_name(prefix, index)):
        path.unlink(missing_ok=True)


def _forget_interrupted(work: Path, output_dir: Path, prefix: str) -> int:
    """Redo the shards of an interrupted run that hold transient failures; the number of shards forgotten.

    An interrupted run's transient failures may be the interruption's doing (its loopback server died
    first, its network went with the SSH session), not the source's, so they are not final: every shard
    in the journal (see :func:`download_shards`) whose stats count one is deleted and downloaded again.
    Shards of the journal without such failures are complete and stay.
    """
    journal = work / _JOURNAL_FILE
    if not journal.exists():
        return 0
    try:
        indices = [int(i) for i in json.loads(journal.read_text())]
    except (OSError, ValueError, TypeError):  # a journal is written atomically; unreadable means tampered
        indices = sorted(_shard_index(p) for p in work.glob("*_stats.json"))
    forgotten = 0
    for index in indices:
        stats = _read_stats(work / f"{index:0{SHARD_DIGITS}d}_stats.json")
        if stats is not None and _transient_failures(stats):
            _forget_shard(work, output_dir, prefix, index)
            forgotten += 1
    return forgotten


def _guarded_multiprocessing_distributor(processes_count: int, downloader: Any, reader: Any, _: Any,
                                         max_shard_retry: int) -> None:
    """img2dataset's multiprocessing distributor (``img2dataset.distributor``), with workers that die with us."""
    from multiprocessing import get_context

    from img2dataset.distributor import retrier

    ctx = get_context("spawn")
    with ctx.Pool(processes_count, maxtasksperchild=5, initializer=exec,
                  initargs=(_DIE_WITH_PARENT, {"PARENT": os.getpid()})) as pool:

        def run(gen: Any) -> list:
            return [row for status, row in pool.imap_unordered(downloader, gen) if status is False]

        retrier(run, run(reader), max_shard_retry)
        pool.terminate()
        pool.join()


def _guarded_logger_process_class() -> type:
    """img2dataset's logger process class, dying with its parent like the workers (it polls forever otherwise).

    Built on first use, not at import (img2dataset takes seconds to import), and reached through the
    module's ``__getattr__`` so that the spawned process can unpickle it by name.
    """
    from img2dataset.logger import LoggerProcess

    class _GuardedLoggerProcess(LoggerProcess):
        #: the instances of this process, for _img2dataset_signals to stop the one a failed download left running
        instances: weakref.WeakSet = weakref.WeakSet()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tcl_parent = os.getpid()
            self.instances.add(self)

        def run(self) -> None:
            exec(_DIE_WITH_PARENT, {"PARENT": self.tcl_parent})
            super().run()

    _GuardedLoggerProcess.__module__, _GuardedLoggerProcess.__qualname__ = __name__, "_GuardedLoggerProcess"
    return _GuardedLoggerProcess


def __getattr__(name: str) -> Any:
    if name == "_GuardedLoggerProcess":
        globals()[name] = cls = _guarded_logger_process_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _summarise(work: Path, output_dir: Path, prefix: str, shard_count: int) -> tuple[dict[str, Any], list[int]]:
    totals = Counter()
    reasons: Counter[str] = Counter()
    missing, shard_bytes = [], 0
    for index in range(shard_count):
        stats = _read_stats(work / f"{index:0{SHARD_DIGITS}d}_stats.json")
        final = output_dir / shard_name(prefix, index)
        if stats is None or not final.exists():
            missing.append(index)
            continue
        shard_bytes += final.stat().st_size
        for key in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[key] += int(stats.get(key, 0))
        totals["failed_transient"] += _transient_failures(stats)
        for message, n in stats.get("status_dict", {}).items():
            if message != "success":
                reasons[_reason(message)] += int(n)
    top = dict(reasons.most_common(_MAX_REASONS))
    if len(reasons) > _MAX_REASONS:
        top["other"] = sum(reasons.values()) - sum(top.values())
    return {
        "samples_attempted": totals["count"],
        "samples_succeeded": totals["successes"],
        "samples_failed": totals["count"] - totals["successes"],
        "failed_to_download": totals["failed_to_download"],
        "failed_to_resize": totals["failed_to_resize"],
        "failed_transient": totals["failed_transient"],
        "failed_by_reason": top,
        "shards": shard_count - len(missing),
        "shard_bytes": shard_bytes,
    }, missing


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- running img2dataset

def _check_environment(distributor: str, extra: Mapping[str, Any]) -> None:
    """What :class:`DownloadSource` cannot check by itself: the distributor's package, that img2dataset knows
    the ``extra`` arguments (reserved ones are refused by DownloadSource already)."""
    check_engine(distributor)  # the package imports; for ray, a cluster answers
    if not extra:
        return
    from img2dataset import download  # a 4 s import (torch, wandb): only when there is something to check

    unknown = sorted(set(extra) - (set(inspect.signature(download).parameters) - IMG2DATASET_RESERVED))
    if unknown:
        raise DownloadError(f"unknown or reserved img2dataset argument(s): {', '.join(unknown)}")


def _prepare_output(output_dir: Path, work: Path) -> None:
    try:
        work.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=work, prefix=".probe.")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise DownloadError(f"cannot write to output directory {output_dir}: {err.strerror or err}") from err


def _clear_previous(output_dir: Path, work: Path, prefix: str) -> None:
    pattern = re.compile(rf"{re.escape(prefix)}\d{{{SHARD_DIGITS},}}\.tar")
    for path in output_dir.iterdir():
        if path.is_file() and pattern.fullmatch(path.name):
            path.unlink()
    for path in work.iterdir():
        if path.is_file():
            path.unlink()


@contextlib.contextmanager
def _img2dataset_signals() -> Iterator[None]:
    """Contain img2dataset's SIGINT handler; make its processes die with this one.

    ``img2dataset.download`` installs a SIGINT handler that deletes its temp folder and calls
    ``sys.exit(0)``: an interrupted download would look like a success to DVC or Prefect, and the
    handler stays installed afterwards. Restore the previous handler and turn that exit into
    ``KeyboardInterrupt``; SIGTERM, when nobody handles it yet, raises ``KeyboardInterrupt`` too. The
    multiprocessing distributor and the logger process are swapped for ones whose processes die with
    this one (see ``_DIE_WITH_PARENT``). ``signal.signal`` only works in the main thread, so in any
    other thread (a Prefect task, say) img2dataset is given a ``signal`` module whose ``signal`` does
    nothing.
    """
    import img2dataset  # noqa: F401 - loads the submodule below

    # not ``import img2dataset.main``: the package rebinds the name ``main`` to the CLI function
    i2d_main = sys.modules["img2dataset.main"]
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    real = {name: getattr(i2d_main, name) for name in ("signal", "multiprocessing_distributor", "LoggerProcess")}
    if not in_main:
        i2d_main.signal = types.SimpleNamespace(SIGINT=signal.SIGINT, signal=lambda *_: None)
    elif previous[signal.SIGTERM] in (signal.SIG_DFL, None):
        # SIGTERM (docker stop, a Prefect cancellation) as an interruption: the pool is terminated and the
        # finished shards promoted on the way out, and the caller sees KeyboardInterrupt, not a success
        signal.signal(signal.SIGTERM, _raise_interrupt)
    i2d_main.multiprocessing_distributor = _guarded_multiprocessing_distributor
    i2d_main.LoggerProcess = sys.modules[__name__]._GuardedLoggerProcess
    try:
        yield
    except SystemExit as err:
        raise KeyboardInterrupt("img2dataset was interrupted") from err
    finally:
        # img2dataset joins its logger process only after a distributor that returned: after one that raised
        # (a failed Spark job) it would still be starting when this process exits, and print a traceback
        for logger in list(sys.modules[__name__]._GuardedLoggerProcess.instances):
            if logger.pid is not None and logger.is_alive():
                logger.terminate()
                logger.join(10)
        for name, value in real.items():
            setattr(i2d_main, name, value)
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def download_shards(source: DownloadSource, *, stats_path: str | os.PathLike | None = None, overwrite: bool = False,
                    promote_interval: float = 2.0) -> dict[str, Any]:
    """Download the (url, caption) pairs of ``source.url_list`` into ``<source.out>/<prefix>NNNNNN.tar`` shards.

    ``source`` (a validated :class:`DownloadSource`, the ``download.sources.<name>`` entry) holds every
    setting. Each sample holds ``.<encode_format>``, ``.txt`` (the caption) and ``.json`` (img2dataset's
    metadata). Shard ``i`` holds rows ``i*samples_per_shard ...`` of the list, minus failures. With
    ``serve``, the list's relative paths are served from ``root`` on 127.0.0.1 for the download.
    Resumable: finished shards are kept, a shard whose final file was deleted is downloaded again.
    The settings that decide the shards' content (the list's hash, shard size, image settings) are
    recorded in the work folder; resuming with other ones is refused unless ``overwrite`` (which
    starts again from nothing). ``extra`` passes further ``img2dataset.download`` arguments through
    (``min_image_size``, ``subjob_size``, ...). ``sort_samples`` rewrites each finished shard with its
    samples in key order, so that the shards, and a training run reading them, are the same on every
    run (one extra read and write of each shard).

    After an interruption (SIGKILL included) the same call resumes: the shards the interrupted run
    wrote with transient failures (:func:`is_transient`) are downloaded again, and img2dataset's
    processes never outlive the call (multiprocessing distributor; pyspark and ray manage their own).

    Returns the stats (written atomically to ``stats_path`` when given): samples attempted,
    succeeded and failed (by reason; ``failed_transient`` of them transient, from runs that
    finished), shards and their bytes over the whole dataset; wall time, samples/s and shards redone
    after an interruption of this call. Raises ``DownloadError`` for unusable input and for shards that did not
    complete (rerun to retry them), ``KeyboardInterrupt`` when interrupted.
    """
    start = time.perf_counter()
    extra, prefix, number_sample_per_shard = dict(source.extra), source.prefix, source.samples_per_shard
    # albumentations (imported by img2dataset in every worker) asks PyPI for a newer version at import.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    _check_environment(source.distributor, extra)
    url_list, output_dir, serve_root = source.url_list, Path(source.out), source.serve_root
    table, dropped = read_url_list(url_list, serve_root)
    work = work_dir(output_dir, prefix)
    _prepare_output(output_dir, work)

    settings = {"url_list_sha256": _file_sha256(url_list), "number_sample_per_shard": number_sample_per_shard,
                "image_size": source.image_size, "resize_mode": source.resize_mode,
                "resize_only_if_bigger": source.resize_only_if_bigger, "encode_format": source.encode_format,
                "encode_quality": source.encode_quality,
                **{k: v for k, v in sorted(extra.items()) if k not in _RUNTIME_ARGS}}
    settings_file = work / _SETTINGS_FILE
    recorded = settings_file.read_text() if settings_file.exists() else None
    current = json.dumps(settings, sort_keys=True, default=str)
    if overwrite:
        _clear_previous(output_dir, work, prefix)
    elif recorded is not None and recorded != current:
        try:
            old = json.loads(recorded)
        except ValueError:
            old = {}
        changed = sorted(k for k in settings.keys() | old.keys() if json.dumps(old.get(k), default=str)
                         != json.dumps(settings.get(k), default=str))
        raise DownloadError(f"{output_dir} holds {prefix or 'unprefixed '}shards made with other settings "
                            f"(changed: {', '.join(changed) or 'unreadable record'}); use overwrite (--overwrite) "
                            "to start again, or another output directory")
    write_text_atomic(settings_file, current)

    redone = _forget_interrupted(work, output_dir, prefix)
    _promote(work, output_dir, prefix, running=False, sort_samples=source.sort_samples)
    shard_count = math.ceil(table.num_rows / number_sample_per_shard)
    done_before = {_shard_index(p) for p in work.glob("*_stats.json")}
    to_do = [i for i in range(shard_count) if i not in done_before]
    attempted_now = sum(min(number_sample_per_shard, table.num_rows - i * number_sample_per_shard) for i in to_do)

    journal = work / _JOURNAL_FILE
    if to_do:
        # Written before img2dataset starts and removed only after it returned normally: whatever this run
        # writes counts as written by an interrupted run until then (see _forget_interrupted).
        write_text_atomic(journal, json.dumps(to_do))
        from img2dataset import download

        input_file = work / _INPUT_FILE
        stop = threading.Event()
        promoter = threading.Thread(target=_promote_while_running, name="tcl-promote-shards", daemon=True,
                                    args=(work, output_dir, prefix, stop, promote_interval, source.sort_samples))
        try:
            with contextlib.ExitStack() as stack:
                # a SparkSession or Ray connection that does what the docs say (see tcl.compat.distributors)
                stack.enter_context(distributor_engine(source.distributor, source.processes_count))
                if serve_root is not None:
                    table = rewrite_relative_urls(table, stack.enter_context(serve_directory(serve_root)))
                pq.write_table(table, input_file)
                promoter.start()
                with _img2dataset_signals():
                    try:
                        download(url_list=str(input_file), output_folder=str(work), input_format="parquet",
                                 url_col="url", caption_col="caption", output_format="webdataset",
                                 image_size=source.image_size, resize_mode=source.resize_mode,
                                 resize_only_if_bigger=source.resize_only_if_bigger,
                                 encode_format=source.encode_format, encode_quality=source.encode_quality,
                                 number_sample_per_shard=number_sample_per_shard,
                                 processes_count=source.processes_count, thread_count=source.threads,
                                 timeout=source.timeout, retries=source.retries, distributor=source.distributor,
                                 incremental_mode="incremental",
                                 oom_shard_count=SHARD_DIGITS, **extra)
                    except (TypeError, ValueError) as err:  # img2dataset's own argument checks
                        raise DownloadError(f"img2dataset refused the settings: {err}") from err
        finally:
            stop.set()
            if promoter.is_alive():
                promoter.join()
            input_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError, tarfile.TarError):  # even when interrupted: finished shards
                _promote(work, output_dir, prefix, running=True, sort_samples=source.sort_samples)  # get their names
        _promote(work, output_dir, prefix, running=False, sort_samples=source.sort_samples)
    journal.unlink(missing_ok=True)

    stats, missing = _summarise(work, output_dir, prefix, shard_count)
    if missing:
        shown = ", ".join(shard_name(prefix, i) for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise DownloadError(f"{len(missing)} of {shard_count} shards did not complete ({shown}; img2dataset "
                            "printed why above); rerun to retry them")
    wall = time.perf_counter() - start
    stats.update({"rows": table.num_rows, "rows_dropped": dropped, "shards_downloaded_now": len(to_do),
                  "shards_redone_after_interruption": redone,
                  "samples_attempted_now": attempted_now, "wall_time_s": round(wall, 3),
                  "throughput_samples_per_s": round(attempted_now / wall, 3) if wall > 0 else 0.0})
    if stats_path is not None:
        write_text_atomic(Path(stats_path), json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
