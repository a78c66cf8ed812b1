"""Checks of a stage's inputs and outputs that can run before any work starts.

Every stage validates its parameters (:mod:`tcl.config`), then these checks, and only then creates
its output folders: a run that would fail on a missing shard folder, evaluation set, CLIP or output
location fails in one line naming the key (and writes nothing) instead of after minutes of work.
Each check raises :class:`tcl.config.ConfigError`; :func:`pipelines.inputs.missing_inputs`
collects them for the whole pipeline.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from .config import ConfigError
from .data.stream import StreamConfig, expand_shards
from .eval.config import EvalConfig

__all__ = ["check_shards", "check_shard_source", "check_eval_data", "check_output_folders",
           "check_clip_weights", "openai_weights_source", "reachable", "PAPER_SETTING_DOCS"]

#: Where the paper setting's inputs come from (the README section with the table of data and weights).
PAPER_SETTING_DOCS = 'README, "The paper setting"'


def check_shard_source(patterns: Iterable[str], key: str, label: str = "", root: str | os.PathLike = ".") -> None:
    """At least one shard behind ``patterns`` (brace patterns, globs, folders), relative to ``root``."""
    patterns = [str(p) if Path(p).is_absolute() else str(Path(root) / p) for p in patterns]
    found, missing = expand_shards(patterns)
    if found:
        return
    if missing:
        detail = f"{len(missing)} expected file(s) missing, e.g. {missing[0]}"
    else:
        detail = f"no .tar files in {', '.join(patterns)}"
    raise ConfigError(f"{key}: no shards found for {label or patterns} ({detail}): run the download stage "
                      "or fix the pattern")


def check_shards(config: StreamConfig, root: str | os.PathLike = ".") -> None:
    """Every ``data.sources`` entry has shards (what :class:`tcl.data.stream.TrainingStream` reads)."""
    if not config.sources:
        raise ConfigError("data.sources: no shard sources configured")
    for i, source in enumerate(config.sources):
        check_shard_source(source.patterns, f"data.sources[{i}].patterns", source.name, root)


def check_eval_data(names: Iterable[str], config: EvalConfig, key: str, root: str | os.PathLike = ".") -> None:
    """The data folders of benchmarks ``names`` (those of parameter ``key``) exist under ``root``."""
    from .eval import EvalDataError, get_benchmark
    from .eval.datasets import check_layout

    for name in names:
        try:
            check_layout(get_benchmark(name), config.data_roots, root)
        except EvalDataError as err:
            raise ConfigError(f"{key}: {err}") from None


def check_output_folders(*folders: str | os.PathLike) -> None:
    """Each folder exists and is writable, or can be created; creates nothing."""
    for folder in map(Path, folders):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"cannot create output folder {folder}: a file of that name is in the way")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(f"output folder {folder} is not writable: choose another one")
            continue
        parent = folder.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"cannot create output folder {folder}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot create output folder {folder}: {parent} is not writable")


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (name lookup included)."""
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # A thread, because a hanging DNS lookup ignores the socket timeout; it is left to finish alone.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def openai_weights_source(model: str) -> tuple[list[Path], str] | None:
    """(files open_clip would read from its cache, host it would download from) for ``model``'s
    ``openai`` weights, or ``None`` when open_clip has none for that model."""
    from open_clip import pretrained

    cfg = pretrained.get_pretrained_cfg(model, "openai")
    if not cfg:
        return None
    if pretrained.has_hf_hub() and cfg.get("hf_hub"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        names = ["open_clip_model.safetensors", filename or pretrained.HF_WEIGHTS_NAME]
        cached = [try_to_load_from_cache(repo, name) for name in names]
        return [Path(p) for p in cached if isinstance(p, str)], urlparse(constants.ENDPOINT).hostname or ""
    url = cfg.get("url", "")
    return [Path("~/.cache/clip").expanduser() / os.path.basename(url)], urlparse(url).hostname or ""


def check_clip_weights(model: str | dict, weights: str | None, root: str | os.PathLike = ".",
                       timeout: float = 3.0) -> None:
    """``clip.weights`` can be read: a file that exists, or ``openai`` cached or downloadable now."""
    if weights is None:
        return
    if weights != "openai":
        path = Path(weights) if Path(weights).is_absolute() else Path(root) / weights
        if not path.is_file():
            raise ConfigError(f"clip.weights: {weights} not found: put OpenAI's ViT-B-16.pt there "
                              f"({PAPER_SETTING_DOCS}) or set clip.weights to the file")
        return
    source = openai_weights_source(model if isinstance(model, str) else "")
    if source is None:
        raise ConfigError(f"clip.weights: open_clip has no 'openai' weights for clip.model {model!r}; use "
                          "ViT-B-16-quickgelu or a weights file")
    files, host = source
    if any(path.is_file() for path in files) or (host and reachable(host, 443, timeout)):
        return
    raise ConfigError(f"clip.weights: 'openai' weights are not in open_clip's cache and {host or 'the hub'} is not "
                      f"reachable: download ViT-B-16.pt ({PAPER_SETTING_DOCS}) and set clip.weights to that file")
