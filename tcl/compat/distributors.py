"""img2dataset's Spark and Ray distributors (img2dataset 1.47), made to do what the project documents,
with pyspark 4 and ray 2.60.

What img2dataset does by itself, and what :func:`distributor_engine` does instead:

* **pyspark.** Without an active SparkSession img2dataset builds one with ``.master("local[N]")`` and a
  16 GB driver: under ``spark-submit --master spark://...`` (where no session is active yet) the job
  silently ran on one machine anyway, since a builder's master replaces spark-submit's. Its Python
  workers ran ``python3`` from ``PATH``, not the interpreter of the stage, and died with
  ``ModuleNotFoundError: No module named 'img2dataset'`` inside a page of Java stack trace. Here the
  session is built first (img2dataset then finds it active): the master given to Spark (spark-submit's
  ``--master``, ``PYSPARK_SUBMIT_ARGS``, ``spark-defaults.conf``) is kept; only spark-submit's default
  ``local[*]`` becomes ``local[processes]``, bound to 127.0.0.1 without a web UI, with this interpreter
  for the workers unless ``PYSPARK_PYTHON`` names another. A failed Spark job,
  or a Java runtime that cannot start, ends in one line.
* **ray.** img2dataset's ray distributor does nothing at all when ``import ray`` fails, and otherwise
  ``ray.init()``\\ s implicitly: a new one-machine instance when no address is set (so a job meant for a
  cluster quietly ran on the driver's machine), or minutes of retries when the address does not
  answer. Here a cluster must answer: ``RAY_ADDRESS`` (``host:port`` of ``ray start --head``; ``local``
  starts a throwaway instance on this machine), else the one ``ray start`` left on this machine, each
  checked with a TCP connection first (seconds, not minutes). Ray 2.60's ``ray start`` turns token
  authentication on when a token exists (``~/.ray/auth_token``) but a driver connecting to it does
  not: it is turned on here the same way, as ``ray start`` does. The driver disconnects afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from ..data.url_lists import DownloadError

__all__ = ["check_engine", "distributor_engine", "spark_session", "ray_connection"]

_PROBE_TIMEOUT_S = 5.0
_SPARK_SUBMIT_DEFAULT_MASTER = "local[*]"  # what spark-submit sets when nobody chose a master


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _spark_job_error(err: BaseException) -> str:
    """The Python error at the bottom of a failed Spark job's report (the line that names the cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("\tat ")]
    for line in reversed(lines):
        if line.split(":", 1)[0].endswith(("Error", "Exception")) and not line.startswith(("py4j", "org.apache")):
            return line
    return _first_line(err)


@contextlib.contextmanager
def spark_session(processes: int) -> Iterator[Any]:
    """The SparkSession img2dataset's pyspark distributor will use: the active one, else a new one (owned, stopped
    on the way out) on the master given to Spark, or ``local[processes]`` on 127.0.0.1 when none was given."""
    _import("pyspark")
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    try:
        SparkContext._ensure_initialized()  # starts the JVM (or joins spark-submit's) and reads its settings
    except Exception as err:  # noqa: BLE001 - pyspark raises PySparkRuntimeError, OSError, ...
        raise DownloadError(f"distributor 'pyspark': cannot start Spark ({_first_line(err)}); it needs a Java 17+ "
                            "runtime (JAVA_HOME or java on PATH; make scale-system installs one)") from err
    conf = SparkConf()
    master = conf.get("spark.master", _SPARK_SUBMIT_DEFAULT_MASTER)
    builder = SparkSession.builder.appName("tcl-download")
    if master == _SPARK_SUBMIT_DEFAULT_MASTER:
        master = f"local[{processes}]"
        # a private one-machine engine: nothing outside this machine has to reach it
        builder = (builder.master(master).config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1").config("spark.ui.enabled", "false"))
    # pyspark takes its workers' interpreter from PYSPARK_PYTHON alone (spark.pyspark.python reaches it only
    # through spark-submit), when the SparkContext starts: this one, not python3 from PATH, for a local master
    own_python = master.startswith("local") and not os.environ.get("PYSPARK_PYTHON")
    try:
        if own_python:
            os.environ["PYSPARK_PYTHON"] = sys.executable
        session = builder.getOrCreate()
    except Exception as err:  # noqa: BLE001 - a master that does not answer, a refused setting, ...
        raise DownloadError(f"distributor 'pyspark': cannot start a Spark session on master {master} "
                            f"({_spark_job_error(err)})") from err
    finally:
        if own_python:
            os.environ.pop("PYSPARK_PYTHON", None)
    print(f"img2dataset on Spark: master {session.sparkContext.master}, {session.sparkContext.defaultParallelism} "
          "cores", flush=True)
    try:
        yield session
    finally:
        session.stop()


def _reachable(address: str) -> str | None:
    """Why ``host:port`` does not accept a TCP connection, or None when it does."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT_S):
            return None
    except ValueError:
        return f"{address!r} is not host:port"
    except OSError as err:
        return err.strerror or str(err)


def _ray_address() -> str:
    """The cluster to connect to: ``RAY_ADDRESS``, else the one ``ray start`` recorded on this machine; raises
    DownloadError when there is none or it does not answer."""
    hint = ("start one with `ray start --head --port 6379` and set RAY_ADDRESS=<head>:6379, or set "
            "RAY_ADDRESS=local for a throwaway instance on this machine")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address.startswith("ray://"):  # Ray Client: its own protocol, checked by ray.init itself
        return address
    if not address or address == "auto":
        from ray._private.utils import read_ray_address  # where `ray start` records its cluster

        address = (read_ray_address() or "").strip()
        if not address:
            raise DownloadError(f"distributor 'ray': no Ray cluster found (RAY_ADDRESS is not set and no "
                                f"`ray start` cluster is recorded on this machine); {hint}")
    if address != "local" and (why := _reachable(address)) is not None:
        raise DownloadError(f"distributor 'ray': no Ray cluster answers at {address} ({why}); {hint}")
    return address


def _enable_ray_token_auth() -> None:
    """Turn token authentication on when a token exists and RAY_AUTH_MODE is unset, as ``ray start`` does."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray: its own rules
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _import(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as err:
        # img2dataset's ray distributor silently does nothing without ray; pyspark's fails mid-run
        raise DownloadError(f"distributor {package!r} needs the {package} package, which cannot be imported "
                            f"({_first_line(err)}); pip install {package} (the project's scale extra)") from err


def check_engine(distributor: str) -> None:
    """What can be checked before anything is written: the distributor's package imports and, for ray, a
    cluster answers (:func:`_ray_address`); raises DownloadError."""
    if distributor in ("pyspark", "ray"):
        ray = _import(distributor)
        if distributor == "ray" and not ray.is_initialized():
            _ray_address()


@contextlib.contextmanager
def ray_connection(processes: int) -> Iterator[None]:
    """A driver connected to a Ray cluster that answers (see :func:`_ray_address`) for img2dataset's ray
    distributor; disconnected on the way out when this call connected it."""
    ray = _import("ray")
    if ray.is_initialized():
        yield
        return
    address = _ray_address()
    if address != "local":
        _enable_ray_token_auth()
    try:
        ray.init(address=address, **({"num_cpus": processes} if address == "local" else {}))
    except (ConnectionError, RuntimeError) as err:
        raise DownloadError(f"distributor 'ray': cannot connect to the Ray cluster at {address} "
                            f"({_first_line(err)})") from err
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def distributor_engine(distributor: str, processes: int) -> Iterator[None]:
    """What img2dataset's ``distributor`` needs around ``img2dataset.download``: a SparkSession for ``pyspark``,
    a Ray connection for ``ray``, nothing for ``multiprocessing``. A failed Spark job raises DownloadError."""
    if distributor == "pyspark":
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        with spark_session(processes):
            try:
                yield
            except (PySparkException, Py4JError) as err:
                raise DownloadError(f"the Spark job failed: {_spark_job_error(err)} (the workers' Python, "
                                    "PYSPARK_PYTHON or spark.pyspark.python, must have img2dataset)") from err
    elif distributor == "ray":
        with ray_connection(processes):
            yield
    else:
        yield
