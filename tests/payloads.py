"""Hostile ``torch.save``-style files: each one creates a marker file if anything unpickles it unsafely.

Four ways a pickle runs code, in the layouts torch reads:

* ``reduce``: ``__reduce__`` returns ``(os.system, ("touch MARKER",))`` (the REDUCE opcode);
* ``build``: a class whose ``__setstate__`` acts (the BUILD opcode);
* ``newobj``: a class whose ``__new__`` acts (NEWOBJ);
* ``inst`` / ``obj``: protocol 0/1 instructions that call a class with arguments (INST, OBJ).

Layouts: ``zip`` (torch's default), ``legacy`` (``torch.save(..., _use_new_zipfile_serialization=False)``)
and ``pickle`` (a bare ``pickle.dump`` of ``{"model": payload}``). The classes live in this importable
module so that an unsafe loader *would* find them.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

__all__ = ["KINDS", "LAYOUTS", "CASES", "write_payload"]


class ActsOnSetState:
    def __setstate__(self, state):
        Path(state["marker"]).touch()


class ActsOnNew:
    def __new__(cls, marker: str = ""):
        if marker:
            Path(marker).touch()
        return super().__new__(cls)

    def __getnewargs__(self):
        return (self.marker,)


class ActsOnInit:
    def __init__(self, marker: str) -> None:
        Path(marker).touch()


class _Reduce:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _object(kind: str, marker: str):
    if kind == "reduce":
        return _Reduce(marker)
    if kind == "build":
        obj = ActsOnSetState.__new__(ActsOnSetState)
        obj.__dict__["marker"] = marker
        return obj
    if kind == "newobj":
        obj = object.__new__(ActsOnNew)
        obj.marker = marker
        return obj
    raise ValueError(kind)


def _instruction_pickle(kind: str, marker: str) -> bytes:
    """``{"model": ActsOnInit(marker)}`` with the object made by the INST or OBJ opcode (the rest as
    torch's own pickles spell it, so that a loader reaches the hostile instruction)."""
    cls = f"{ActsOnInit.__module__}\n{ActsOnInit.__name__}\n".encode()

    def text(value: str) -> bytes:  # BINUNICODE
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    call = b"(" + text(marker) + b"i" + cls if kind == "inst" else b"(c" + cls + text(marker) + b"o"
    return b"\x80\x02}" + text("model") + call + b"s."


def write_payload(path: Path, kind: str, layout: str, marker: Path) -> Path:
    """Write the ``kind`` payload in ``layout`` to ``path``; unsafe loading would create ``marker``."""
    marker = str(marker)
    if kind in ("inst", "obj"):
        data = _instruction_pickle(kind, marker)
        if layout == "pickle":
            path.write_bytes(data)
        elif layout == "zip":  # torch's zip layout with the hostile instructions as its data.pkl
            buffer = io.BytesIO()
            torch.save({"model": {}}, buffer)
            with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
                for item in src.infolist():
                    dst.writestr(item, data if item.filename.endswith("/data.pkl") else src.read(item))
        else:
            raise ValueError(f"{kind} has no {layout} layout")
        return path
    payload = {"model": _object(kind, marker)}
    if layout == "zip":
        torch.save(payload, path)
    elif layout == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif layout == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    else:
        raise ValueError(layout)
    return path


KINDS = ("reduce", "build", "newobj", "inst", "obj")
LAYOUTS = ("zip", "legacy", "pickle")
#: Every (kind, layout) pair that exists.
CASES = [(kind, layout) for kind in KINDS for layout in LAYOUTS
         if not (kind in ("inst", "obj") and layout == "legacy")]
