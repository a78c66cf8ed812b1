"""Class-name text embeddings cached on disk, per (CLIP text tower, class names, templates).

Encoding every (class, template) prompt through the frozen text tower is the one fixed cost of a
benchmark (171 COCO-Stuff classes × 9 ``custom`` templates: 1539 prompts through a 12-layer
transformer). The result depends only on the tower's weights, the prompts and how they were
computed, so it is stored once and read back by every later evaluation of those classes: the
evaluate and baseline stages, the threshold sweep, validation during training.

The file name is a digest of the *key*, and the key names everything the embedding depends on: a
SHA-256 digest of every text-tower tensor (name, dtype, shape and bytes: a checkpoint, the official
``tcl.pth`` and a baseline's saved CLIP hash the same way), the class names, the template set's
name and strings, the BPE tokens of the prompts (the tokenizer), the text chunk size, the weights'
dtype, the device type and the torch version (the last ones because a different kernel may round
differently, and a cached embedding must be bit-identical to the one it replaces).

Files are safetensors (no pickle) holding the fp32 embedding, the key and a SHA-256 of the tensor's
bytes; a file whose key, shape, dtype or checksum is not as expected, or that does not parse
(truncated, garbage), is recomputed and replaced. Writes go to a temporary file beside the target
and are renamed over it (:mod:`tcl.atomic`), so concurrent writers of the same key (DVC stages in
parallel, torchrun ranks) each replace the file with a complete, identical one and a reader never
sees a partial file. A cache that cannot be written (read-only folder, full disk) only warns.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import TCLError
from ..model.templates import get_templates

__all__ = ["FORMAT", "text_tower_digest", "cache_key", "cache_file", "read_entry", "write_entry",
           "text_embedding"]

#: Bumped whenever what an entry means changes (how embeddings are computed, the file's contents).
FORMAT = 1
_TENSOR = "text_emb"
# digest memo per CLIP module: the tensors' (name, storage, version) fingerprint → digest, so that
# validation during training does not re-hash a frozen tower it hashed at the previous evaluation
_DIGESTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _text_tensors(clip: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of the CLIP but the image tower's (``visual.*``), by name."""
    named = [*clip.named_parameters(), *clip.named_buffers()]
    return sorted(((name, t) for name, t in named if not name.startswith("visual.")), key=lambda item: item[0])


def text_tower_digest(clip: nn.Module) -> str:
    """SHA-256 of the text tower's tensors (names, dtypes, shapes and bytes), memoised while
    none of them is replaced or changed in place."""
    tensors = _text_tensors(clip)
    fingerprint = tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape), str(t.device))
                        for name, t in tensors)
    known = _DIGESTS.get(clip)
    if known is not None and known[0] == fingerprint:
        return known[1]
    digest = hashlib.sha256()  # (SHA-NI: faster here than BLAKE2b)
    for name, tensor in tensors:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        flat = tensor.detach().contiguous().view(-1).view(torch.uint8) if tensor.numel() else tensor.new_zeros(0)
        digest.update(flat.cpu().numpy().tobytes())
    _DIGESTS[clip] = (fingerprint, digest.hexdigest())
    return digest.hexdigest()


def cache_key(model, names: list[str], template: str) -> dict[str, Any] | None:
    """What the embedding of ``names`` with ``template`` depends on, or ``None`` when ``model`` has no
    CLIP text tower to hash (then nothing is cached)."""
    clip = getattr(model, "clip", None)
    if not isinstance(clip, nn.Module) or not callable(getattr(model, "tokenize", None)):
        return None
    templates = get_templates(template)
    tokens = model.tokenize([t.format(name) for name in names for t in templates])
    weights = next((t for name, t in _text_tensors(clip) if t.is_floating_point()), None)
    return {
        "format": FORMAT, "text_tower": text_tower_digest(clip), "classes": list(names), "template": template,
        "templates": list(templates), "tokens": hashlib.sha256(tokens.cpu().numpy().tobytes()).hexdigest(),
        "text_chunk_size": getattr(getattr(model, "config", None), "text_chunk_size", None),
        "dtype": str(weights.dtype) if weights is not None else None,
        "device": weights.device.type if weights is not None else None, "torch": torch.__version__,
    }


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def cache_file(folder: str | Path, key: dict[str, Any]) -> Path:
    """The entry of ``key`` in ``folder``."""
    return Path(folder) / f"{hashlib.sha256(_key_text(key).encode()).hexdigest()[:40]}.safetensors"


def _checksum(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def read_entry(path: str | Path, key: dict[str, Any]) -> torch.Tensor | None:
    """The cached fp32 embedding of ``key`` (on the CPU); ``None`` when the file is absent or is not a
    complete, intact entry of this key (truncated, garbage, another key's, altered)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as entry:
            meta = entry.metadata() or {}
            if meta.get("key") != _key_text(key) or list(entry.keys()) != [_TENSOR]:
                return None
            tensor = entry.get_tensor(_TENSOR)
    except Exception:  # safetensors raises its own error types for every malformed file; all mean "rebuild"
        return None
    if tensor.dtype != torch.float32 or tensor.dim() != 2 or tensor.shape[0] != len(key["classes"]) \
            or meta.get("sha256") != _checksum(tensor):
        return None
    return tensor


def write_entry(path: str | Path, key: dict[str, Any], tensor: torch.Tensor) -> None:
    """Store ``tensor`` (fp32 [K, D]) as ``key``'s entry: temporary file, then rename (safe to race)."""
    from safetensors.torch import save

    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    data = save({_TENSOR: tensor}, metadata={"key": _key_text(key), "sha256": _checksum(tensor)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def text_embedding(model, names: list[str], template: str, folder: str | Path | None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``model.build_text_embedding(names, template)`` in fp32 on ``device``, read from ``folder``'s
    cache when an intact entry exists, else computed and stored there (``folder`` None: no cache).

    Returns the embedding and a record: ``cache`` (``hit``, ``miss``, ``rebuilt`` after an unusable
    file, ``off``: no folder or a model without a CLIP text tower), ``seconds`` and ``file``.
    """
    start = time.perf_counter()
    key = cache_key(model, names, template) if folder is not None else None
    path = cache_file(folder, key) if key is not None else None
    if path is not None:
        cached = read_entry(path, key)
        if cached is not None:
            emb = cached.to(device) if device is not None else cached
            return emb, {"cache": "hit", "seconds": round(time.perf_counter() - start, 4), "file": str(path)}
    emb = model.build_text_embedding(names, template).float()
    if device is not None:
        emb = emb.to(device)
    state = "off"
    if path is not None:
        state = "rebuilt" if path.exists() else "miss"
        try:
            write_entry(path, key, emb)
        except (OSError, TCLError) as err:  # an optimisation only: the evaluation goes on without it
            warnings.warn(f"text-embedding cache not written: {err}", stacklevel=2)
    return emb, {"cache": state, "seconds": round(time.perf_counter() - start, 4),
                 "file": str(path) if path is not None else None}
