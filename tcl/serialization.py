"""Reading ``torch.save`` files without running code from them.

Every weights file and checkpoint the project reads goes through :func:`safe_load`, which is
``torch.load(weights_only=True)``: torch's restricted unpickler rebuilds tensors, containers and
plain values, and refuses any other Python object, whatever the file's layout (zip or the legacy
pickle format). No other loader is used on a file a user supplies.

Two kinds of harmless extras occur in real checkpoints and are admitted as exactly those names:

* the official training checkpoint (kakaobrain/tcl, ``utils/checkpoint.py: save_checkpoint``)
  pickles its OmegaConf config object. Its classes are mapped to inert stand-ins
  (:class:`PickledConfig` and friends) through ``torch.serialization.safe_globals``, so the file
  loads without omegaconf and without calling any of omegaconf's code;
* its metrics are NumPy scalars (``np.mean`` of the benchmarks' mIoU): NumPy's scalar and dtype
  constructors, which build numbers and nothing else.

Anything else is refused with one line naming the file and the global it asked for.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TCLError

__all__ = ["LoadError", "PickledConfig", "safe_load", "ALLOWED_EXTRAS"]


class LoadError(TCLError, ValueError):
    """A file is missing, unreadable, or asks for Python objects that are never loaded."""


class PickledConfig:
    """Inert stand-in for an object of an allow-listed config class (OmegaConf's containers and nodes).

    The unpickler creates it without calling any constructor and stores the pickled state in
    ``state``; nothing of the original class runs. ``qualname`` is the class it stands for.
    """

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _stand_in(qualname: str) -> tuple[type, str]:
    cls = type(qualname.rsplit(".", 1)[1], (PickledConfig,), {"qualname": qualname, "__module__": __name__})
    return cls, qualname


_OMEGACONF = [
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata",
    *(f"omegaconf.nodes.{name}" for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                             "BytesNode", "PathNode", "EnumNode", "ValueNode")),
    "typing.Any",  # an OmegaConf node's declared type
]
# Type objects the config metadata refers to (``ref_type=dict``, ``key_type=int``, its resolver cache, a
# ``defaultdict(dict)``); calling any of them only builds a plain value or container.
_BUILTIN_TYPES = [dict, list, tuple, set, frozenset, int, float, str, bool, bytes, collections.defaultdict]


def _numpy_scalar_constructors() -> list:
    """NumPy's scalar constructor (under its 1.x and 2.x module paths), ``dtype`` and the numeric and bool
    dtype classes that a pickled dtype is rebuilt as: they make numbers, never arrays of objects."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtype_classes = [type(np.dtype(code)) for code in "?bhilqBHILQefdg"]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *dict.fromkeys(dtype_classes)]


#: Everything beyond torch's own weights-only set that :func:`safe_load` admits.
ALLOWED_EXTRAS: list = [*map(_stand_in, _OMEGACONF), *_BUILTIN_TYPES, *_numpy_scalar_constructors()]

_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
_OPCODE = re.compile(r"Unsupported operand (\d+)")


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
              what: str = "PyTorch file", error: type[LoadError] = LoadError) -> Any:
    """``torch.load(path, weights_only=True)`` plus :data:`ALLOWED_EXTRAS`; one-line ``error`` on failure.

    ``what`` names the file's role in messages ("checkpoint", "CLIP weights file"); ``error`` is the
    caller's error class (a subclass of :class:`LoadError`).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file (0 bytes), not a {what}")
    try:
        with torch.serialization.safe_globals(ALLOWED_EXTRAS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise error(_refusal(path, what, str(err))) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError, TypeError,
            AttributeError, UnicodeDecodeError) as err:
        # torch raises all of these on files that are not what they claim (truncated, text, random bytes).
        reason = "not a PyTorch file" if isinstance(err, KeyError) else _first_line(err)
        raise error(f"{path}: not a readable {what}, truncated or corrupt ({reason})") from None


def _refusal(path: Path, what: str, message: str) -> str:
    found = _GLOBAL.search(message)
    if found:
        name = found.group(1)
        return (f"{path}: refused to load: it asks for the Python object {name}, which a {what} never needs "
                "(only tensors and plain values are read, so no code in a file can run); "
                "if you trust the file, re-save just its tensors with torch.save(state_dict)")
    opcode = _OPCODE.search(message)
    if opcode:
        code = int(opcode.group(1))
        return (f"{path}: refused to load: it uses the pickle instruction {chr(code)!r} ({code}), which builds "
                f"arbitrary Python objects; a {what} holds only tensors and plain values")
    if "magic number" in message.lower():  # a bare pickle, not torch.save's layout
        return f"{path}: not a {what} written by torch.save (a bare pickle or another format); refused"
    return f"{path}: refused to load: {_first_line(message)}"


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    # torch's weights-only messages start with a long preamble; the cause follows "WeightsUnpickler error:".
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__ if isinstance(err, BaseException) else "unknown error"
