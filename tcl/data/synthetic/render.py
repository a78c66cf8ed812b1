"""Scenes of the synthetic world: background, object layout, colouring and caption, as :func:`render_scene`.

A scene has a background of one stuff kind or two split by a horizon, then one to three large,
barely occluded objects placed one by one (each keeps at least ``min_object_frac`` of the image after
occlusion and after carving a 1-px rim), then a caption. Scene ``index`` of ``stream`` is drawn from
its own random stream ``(seed, stream, index)``, so any process may draw any scene in any order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .captions import _caption
from .draw import _fill_ratio, _grid, _object_rgb, _parts, _stuff_rgb
from .errors import SyntheticError
from .vocabulary import _BOTTOM_STUFF, _KIND, _TOP_STUFF, _TWO_STUFF_P, KIND_NAMES, STUFF_NAMES

__all__ = ["Scene", "render_scene"]


@dataclass(frozen=True)
class Scene:
    """One rendered scene: image, instance and stuff maps, and its caption."""

    image: np.ndarray  # [H, W, 3] uint8
    instances: np.ndarray  # [H, W] uint8: 0 background, i = objects[i - 1]
    stuff: np.ndarray  # [H, W] uint8: index into ``stuffs``
    objects: tuple[str, ...]  # object kind per instance, in drawing order
    stuffs: tuple[str, ...]  # stuff kinds present: one, or (top, bottom) split by a horizon
    caption: str


# Target visible area of each object (fraction of the image) by number of objects.
_AREA_RANGE = {1: (0.16, 0.45), 2: (0.09, 0.22), 3: (0.075, 0.14)}
_MAX_OCCLUSION = 0.25
_PLACEMENT_TRIES = 30
_LAYOUT_TRIES = 12


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4 neighbours are inside too: what is left after VOC's 1-px rim is carved."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


def _sample_kinds(rng: np.random.Generator, max_objects: int) -> list[str]:
    count = int(rng.choice([1, 2, 3][:max_objects], p=np.array([0.4, 0.35, 0.25][:max_objects]) /
                           sum([0.4, 0.35, 0.25][:max_objects])))
    kinds = [KIND_NAMES[int(rng.integers(len(KIND_NAMES)))]]
    for _ in range(count - 1):  # repeats are likelier than chance so that "two dogs" is common
        kinds.append(kinds[-1] if rng.random() < 0.3 else KIND_NAMES[int(rng.integers(len(KIND_NAMES)))])
    return kinds


def _try_layout(rng, kinds, h, w, min_frac):
    """Place objects one by one (later ones on top); None if the rules cannot be met."""
    lo, hi = _AREA_RANGE[len(kinds)]
    lo = max(lo, 1.2 * min_frac)
    hi = max(hi, 1.5 * lo)
    instances = np.zeros((h, w), np.uint8)
    placed, own_area = [], []
    for number, kind in enumerate(kinds, start=1):
        aspect = _KIND[kind].aspect
        box_area = rng.uniform(lo, hi) * h * w / _fill_ratio(kind)
        bh = math.sqrt(box_area / aspect)
        bw = bh * aspect
        shrink = min(1.0, 0.94 * w / bw, 0.94 * h / bh)
        bh, bw = max(8, round(bh * shrink)), max(8, round(bw * shrink))
        parts = _parts(kind, bw, bh)
        if rng.random() < 0.5:
            parts = parts[:, ::-1]
        mask = parts > 0
        for _ in range(_PLACEMENT_TRIES):
            y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            under = instances[y0:y0 + bh, x0:x0 + bw][mask]
            hidden = np.bincount(under, minlength=number)[1:]
            visible = np.bincount(instances.ravel(), minlength=number)[1:]
            if all(visible[j] - hidden[j] >= (1 - _MAX_OCCLUSION) * own_area[j] for j in range(number - 1)):
                instances[y0:y0 + bh, x0:x0 + bw][mask] = number
                placed.append((kind, y0, x0, parts))
                own_area.append(int(mask.sum()))
                break
        else:
            return None
    floor = min_frac * h * w
    if any(_eroded(instances == i).sum() < floor for i in range(1, len(kinds) + 1)):
        return None
    return instances, placed


def _layout(rng, kinds, h, w, min_frac):
    while True:
        for _ in range(_LAYOUT_TRIES):
            result = _try_layout(rng, kinds, h, w, min_frac)
            if result is not None:
                return kinds, *result
        if len(kinds) == 1:
            raise SyntheticError(f"cannot place an object covering {min_frac:.3f} of a {w}x{h} image; "
                                 "lower min_object_frac or enlarge the image")
        kinds = kinds[:-1]


def _background(rng, h, w):
    if rng.random() < _TWO_STUFF_P:
        names = (_TOP_STUFF[int(rng.integers(len(_TOP_STUFF)))], _BOTTOM_STUFF[int(rng.integers(len(_BOTTOM_STUFF)))])
        yy, xx = _grid(h, w)
        horizon = h * rng.uniform(0.3, 0.65)
        if names[1] in ("grass", "sand", "sea"):  # natural ground rolls a little
            horizon = horizon + h * 0.04 * np.sin(2 * np.pi * xx / w * rng.uniform(0.5, 1.5) + rng.uniform(0, 6.3))
        stuff = (yy >= horizon).astype(np.uint8)
        rgb = np.where(stuff[..., None] == 0, _stuff_rgb(names[0], rng, h, w), _stuff_rgb(names[1], rng, h, w))
        if stuff.min() == stuff.max():
            names, stuff = (names[int(stuff[0, 0])],), np.zeros((h, w), np.uint8)
        return names, stuff, rgb
    name = STUFF_NAMES[int(rng.integers(len(STUFF_NAMES)))]
    return (name,), np.zeros((h, w), np.uint8), _stuff_rgb(name, rng, h, w)


def render_scene(seed: int, stream: int, index: int, size: int, max_objects: int = 3,
                 min_object_frac: float = 1 / 16) -> Scene:
    """Draw scene ``index`` of ``stream``: a pure function of its arguments (any process, any order)."""
    rng = np.random.default_rng([seed, stream, index])
    stuffs, stuff, rgb = _background(rng, size, size)
    kinds, instances, placed = _layout(rng, _sample_kinds(rng, max_objects), size, size, min_object_frac)
    for kind, y0, x0, parts in placed:
        bh, bw = parts.shape
        mask = parts > 0
        region = rgb[y0:y0 + bh, x0:x0 + bw]
        region[mask] = _object_rgb(kind, parts, rng)[mask]
    image = np.clip(rgb, 0, 255).astype(np.uint8)
    caption = _caption(rng, tuple(kinds), stuffs)
    return Scene(image=image, instances=instances, stuff=stuff, objects=tuple(kinds), stuffs=stuffs, caption=caption)
