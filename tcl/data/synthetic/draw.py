"""Drawing primitives of the synthetic world: object silhouettes, object textures and backgrounds.

Objects are drawn as part maps (0 outside, 1 body, 2.. details) at any box size, then coloured with
their kind's jittered body colour, characteristic texture and detail colours; backgrounds are
full-size textures of one stuff kind. Every random draw comes from the caller's generator in a fixed
order, so a scene stays a pure function of its random stream. All helpers are private to the package.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from .errors import SyntheticError
from .vocabulary import _KIND

__all__: list[str] = []


def _canvas(w: int, h: int):
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)

    def p(x: float, y: float) -> tuple[float, float]:
        return x * (w - 1), y * (h - 1)

    def circle(cx: float, cy: float, r_h: float, value: int) -> None:  # radius in units of h
        x, y, r = cx * (w - 1), cy * (h - 1), r_h * (h - 1)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=value)

    return image, draw, p, circle


def _draw_car(w, h):
    image, d, p, circle = _canvas(w, h)
    d.rounded_rectangle((*p(0, 0.36), *p(1, 0.8)), radius=0.12 * h, fill=1)
    d.polygon((p(0.18, 0.4), p(0.32, 0.03), p(0.7, 0.03), p(0.86, 0.4)), fill=1)
    d.polygon((p(0.26, 0.37), p(0.36, 0.11), p(0.5, 0.11), p(0.5, 0.37)), fill=2)
    d.polygon((p(0.54, 0.37), p(0.54, 0.11), p(0.67, 0.11), p(0.77, 0.37)), fill=2)
    for cx in (0.23, 0.77):
        circle(cx, 0.8, 0.2, 3)
        circle(cx, 0.8, 0.08, 4)
    return image


def _draw_bus(w, h):
    image, d, p, circle = _canvas(w, h)
    d.rounded_rectangle((*p(0, 0), *p(1, 0.86)), radius=0.1 * h, fill=1)
    for k in range(6):
        x = 0.05 + k * 0.155
        d.rectangle((*p(x, 0.12), *p(x + 0.11, 0.45)), fill=2)
    d.rectangle((*p(0.0, 0.58), *p(1.0, 0.66)), fill=2)
    for cx in (0.2, 0.8):
        circle(cx, 0.84, 0.16, 3)
        circle(cx, 0.84, 0.06, 4)
    return image


def _draw_boat(w, h):
    image, d, p, _ = _canvas(w, h)
    d.polygon((p(0, 0.6), p(1, 0.6), p(0.83, 1), p(0.17, 1)), fill=1)
    d.polygon((p(0.53, 0.02), p(0.53, 0.56), p(0.92, 0.56)), fill=2)
    d.polygon((p(0.47, 0.1), p(0.47, 0.56), p(0.14, 0.56)), fill=2)
    d.line((p(0.5, 0.0), p(0.5, 0.6)), fill=3, width=max(1, round(w / 30)))
    return image


def _draw_bottle(w, h):
    image, d, p, _ = _canvas(w, h)
    d.rounded_rectangle((*p(0, 0.38), *p(1, 1)), radius=0.18 * w, fill=1)
    d.polygon((p(0.02, 0.45), p(0.3, 0.22), p(0.7, 0.22), p(0.98, 0.45)), fill=1)
    d.rectangle((*p(0.3, 0.05), *p(0.7, 0.26)), fill=1)
    d.rectangle((*p(0.0, 0.58), *p(1.0, 0.78)), fill=3)
    d.rectangle((*p(0.26, 0.0), *p(0.74, 0.08)), fill=2)
    return image


def _draw_cat(w, h):
    image, d, p, _ = _canvas(w, h)
    d.ellipse((*p(0.03, 0.2), *p(0.97, 1.0)), fill=1)
    d.polygon((p(0.06, 0.55), p(0.12, 0.0), p(0.45, 0.3)), fill=1)
    d.polygon((p(0.94, 0.55), p(0.88, 0.0), p(0.55, 0.3)), fill=1)
    d.ellipse((*p(0.24, 0.45), *p(0.4, 0.62)), fill=2)
    d.ellipse((*p(0.6, 0.45), *p(0.76, 0.62)), fill=2)
    d.polygon((p(0.43, 0.68), p(0.57, 0.68), p(0.5, 0.77)), fill=3)
    return image


def _draw_dog(w, h):
    image, d, p, circle = _canvas(w, h)
    for x in (0.16, 0.28, 0.54, 0.66):
        d.rectangle((*p(x, 0.6), *p(x + 0.08, 1.0)), fill=1)
    d.ellipse((*p(0.08, 0.3), *p(0.8, 0.78)), fill=1)
    d.polygon((p(0.12, 0.45), p(0.0, 0.12), p(0.06, 0.1), p(0.2, 0.4)), fill=1)
    circle(0.8, 0.32, 0.25, 1)
    d.ellipse((*p(0.84, 0.3), *p(1.0, 0.5)), fill=1)
    d.ellipse((*p(0.66, 0.2), *p(0.76, 0.58)), fill=2)
    circle(0.84, 0.26, 0.04, 3)
    circle(0.97, 0.38, 0.045, 3)
    return image


def _draw_bird(w, h):
    image, d, p, circle = _canvas(w, h)
    d.line((p(0.4, 0.8), p(0.4, 1.0)), fill=2, width=max(1, round(w / 28)))
    d.line((p(0.54, 0.8), p(0.54, 1.0)), fill=2, width=max(1, round(w / 28)))
    d.ellipse((*p(0.12, 0.3), *p(0.82, 0.86)), fill=1)
    d.polygon((p(0.2, 0.5), p(0.0, 0.3), p(0.0, 0.75)), fill=1)
    circle(0.76, 0.32, 0.22, 1)
    d.polygon((p(0.88, 0.24), p(1.0, 0.35), p(0.88, 0.44)), fill=2)
    circle(0.8, 0.27, 0.045, 3)
    return image


def _draw_sheep(w, h):
    image, d, p, circle = _canvas(w, h)
    for x in (0.22, 0.52):
        d.rectangle((*p(x, 0.6), *p(x + 0.08, 1.0)), fill=2)
    d.ellipse((*p(0.06, 0.14), *p(0.8, 0.8)), fill=1)
    for angle in np.linspace(0, 2 * np.pi, 10, endpoint=False):
        circle(0.43 + 0.3 * math.cos(angle), 0.47 + 0.27 * math.sin(angle), 0.13, 1)
    d.ellipse((*p(0.74, 0.22), *p(0.98, 0.6)), fill=2)
    d.ellipse((*p(0.7, 0.24), *p(0.8, 0.34)), fill=2)
    return image


_DRAW = {"car": _draw_car, "bus": _draw_bus, "boat": _draw_boat, "bottle": _draw_bottle, "cat": _draw_cat,
         "dog": _draw_dog, "bird": _draw_bird, "sheep": _draw_sheep}
_DETAIL_COLOURS = {  # part 2, 3, 4 colours per kind
    "car": ((165, 200, 230), (22, 22, 24), (150, 150, 150)),
    "bus": ((35, 50, 80), (22, 22, 24), (150, 150, 150)),
    "boat": ((245, 245, 240), (110, 70, 35), (0, 0, 0)),
    "bottle": ((170, 25, 30), (235, 225, 185), (0, 0, 0)),
    "cat": ((150, 200, 40), (235, 130, 150), (0, 0, 0)),
    "dog": ((70, 40, 20), (15, 15, 15), (0, 0, 0)),
    "bird": ((250, 160, 25), (10, 10, 10), (0, 0, 0)),
    "sheep": ((35, 32, 32), (0, 0, 0), (0, 0, 0)),
}


def _parts(kind: str, w: int, h: int) -> np.ndarray:
    return np.asarray(_DRAW[kind](w, h), dtype=np.uint8)


@cache
def _fill_ratio(kind: str) -> float:
    """Share of the bounding box an object covers: converts a target area into a box size."""
    h = 120
    return float((_parts(kind, round(h * _KIND[kind].aspect), h) > 0).mean())


def _jitter(rng: np.random.Generator, colour, spread: float = 0.12, shift: float = 10.0) -> np.ndarray:
    """Same hue family every time, never the same exact pixel values (brightness and channel jitter)."""
    rgb = np.asarray(colour, np.float32) * rng.uniform(1 - spread, 1 + spread) + rng.uniform(-shift, shift, 3)
    return rgb.astype(np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _jittered_dots(rng, h, w, spacing, radius, ring=None):
    """Irregular dots (or rings) on a jittered grid: one per cell, so nothing overlaps."""
    yy, xx = _grid(h, w)
    rows, cols = int(h // spacing) + 2, int(w // spacing) + 2
    margin = max(0.0, spacing / 2 - radius)
    off = rng.uniform(-margin, margin, (2, rows, cols)).astype(np.float32)
    phase = rng.uniform(0, spacing, 2).astype(np.float32)
    gy, gx = (yy + phase[0]) / spacing, (xx + phase[1]) / spacing
    iy, ix = np.floor(gy).astype(np.intp), np.floor(gx).astype(np.intp)
    cy = (gy - iy - 0.5) * spacing - off[0][iy, ix]
    cx = (gx - ix - 0.5) * spacing - off[1][iy, ix]
    dist2 = cy * cy + cx * cx
    if ring is None:
        return dist2 < radius * radius
    return (dist2 < radius * radius) & (dist2 > ring * ring)


def _body_texture(kind: str, rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """The characteristic texture of a kind over its box (float RGB, body colour ``base``)."""
    yy, xx = _grid(h, w)
    rgb = np.broadcast_to(base, (h, w, 3)).copy()
    if kind == "car":  # solid, lit from above
        rgb *= (1.08 - 0.25 * yy / max(h - 1, 1))[..., None]
    elif kind == "bus":  # the windows and band are parts; the body gets a faint panel seam grid
        seams = ((xx % max(4, round(w / 8))) < 1) & (yy > 0.5 * h)
        rgb[seams] *= 0.85
    elif kind == "boat":  # navy / white horizontal stripes
        period = max(4.0, h / 9 * rng.uniform(0.85, 1.15))
        white = ((yy + rng.uniform(0, period)) % period) < period / 2
        rgb = np.where(np.broadcast_to(white, (h, w))[..., None], np.float32([240, 240, 236]), rgb)
    elif kind == "bottle":  # glass cylinder: darker edges, a bright vertical highlight
        u = xx / max(w - 1, 1)
        shade = 0.65 + 0.45 * np.sin(np.pi * u)
        highlight = np.exp(-(((u - rng.uniform(0.22, 0.34)) / 0.07) ** 2))
        rgb = rgb * shade[..., None] + (255 - rgb * shade[..., None]) * (0.7 * highlight)[..., None]
    elif kind == "cat":  # dark tabby stripes, slanted
        period = max(4.0, w / 5.5 * rng.uniform(0.85, 1.15))
        slant = rng.uniform(0.3, 0.7)
        stripes = ((xx + slant * yy + rng.uniform(0, period)) % period) < 0.38 * period
        rgb[np.broadcast_to(stripes, (h, w))] = base * 0.45
    elif kind == "dog":  # black spots
        spacing = max(5.0, w / 5.0)
        spots = _jittered_dots(rng, h, w, spacing, 0.3 * spacing)
        rgb[spots] = np.float32([20, 16, 14])
    elif kind == "bird":  # light zigzag bands
        period = max(4.0, h / 5.0)
        tooth = max(3.0, w / 8.0)
        zig = np.abs(((xx / tooth) % 2.0) - 1.0) * period * 0.6
        bands = ((yy + zig + rng.uniform(0, period)) % period) < 0.3 * period
        rgb[bands] = np.minimum(base * 0.5 + 140, 250)
    elif kind == "sheep":  # grey wool curls
        spacing = max(4.0, w / 9.0)
        curls = _jittered_dots(rng, h, w, spacing, 0.42 * spacing, ring=0.2 * spacing)
        rgb[curls] *= 0.72
    return rgb


def _object_rgb(kind: str, parts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = parts.shape
    rgb = _body_texture(kind, rng, h, w, _jitter(rng, _KIND[kind].colour))
    for value, colour in enumerate(_DETAIL_COLOURS[kind], start=2):
        sel = parts == value
        if sel.any():
            rgb[sel] = _jitter(rng, colour, 0.08, 6.0)
    return rgb


def _upsampled_noise(rng, h, w, cell_h, cell_w):
    """Blocky low-frequency noise, bilinearly smoothed: blotches and streaks without scipy."""
    gh, gw = h // cell_h + 2, w // cell_w + 2
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    y = np.arange(h, dtype=np.float32) / cell_h
    x = np.arange(w, dtype=np.float32) / cell_w
    y0, x0 = y.astype(np.intp), x.astype(np.intp)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _stuff_rgb(name: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A full-size background of one stuff kind (float RGB)."""
    yy, xx = _grid(h, w)
    if name == "grass":
        base = _jitter(rng, (70, 140, 45), 0.15, 8)
        blades = _upsampled_noise(rng, h, w, max(2, h // 12), 1)
        light = 1 + 0.22 * blades + 0.12 * rng.standard_normal((h, w)).astype(np.float32)
        return base * light[..., None]
    if name == "sky":
        top, bottom = _jitter(rng, (60, 120, 215), 0.1, 8), _jitter(rng, (170, 205, 245), 0.06, 6)
        t = (yy / max(h - 1, 1) + 0.0 * xx)[..., None]
        return top * (1 - t) + bottom * t + rng.normal(0, 1.5, (h, w, 1)).astype(np.float32)
    if name == "sand":
        base = _jitter(rng, (215, 188, 135), 0.08, 6)
        period = max(4.0, h / rng.uniform(5, 9))
        ripples = np.sin(2 * np.pi * (yy + 0.4 * xx) / period + rng.uniform(0, 2 * np.pi))
        light = 1 + 0.05 * ripples + 0.07 * rng.standard_normal((h, w)).astype(np.float32)
        return base * light[..., None]
    if name == "sea":
        base = _jitter(rng, (25, 70, 140), 0.12, 6)
        period = max(4.0, h / rng.uniform(6, 10))
        wobble = 0.25 * period * np.sin(2 * np.pi * xx / max(6.0, w / rng.uniform(2, 4)) + rng.uniform(0, 6.3))
        crest = np.sin(2 * np.pi * (yy + wobble) / period + rng.uniform(0, 6.3))
        crest = np.clip((crest - 0.55) / 0.45, 0, 1)
        rgb = base * (1 + 0.04 * rng.standard_normal((h, w, 1)).astype(np.float32))
        return rgb + crest[..., None] * (np.float32([120, 170, 215]) - base)
    if name == "wall":
        row_h = max(4.0, h / rng.uniform(7, 10))
        brick_w = row_h * rng.uniform(2.0, 2.6)
        ry = yy + rng.uniform(0, row_h)
        row = np.floor(ry / row_h)
        shifted = xx + (row % 2) * brick_w / 2 + rng.uniform(0, brick_w)
        col = np.floor(shifted / brick_w)
        mortar = ((ry % row_h) < 1.2) | ((shifted % brick_w) < 1.2)
        tint = rng.uniform(0.82, 1.12, 4096).astype(np.float32)
        brick = tint[((row * 131 + col * 17) % 4096).astype(np.intp)]
        rgb = _jitter(rng, (160, 72, 50), 0.08, 6) * brick[..., None]
        rgb[np.broadcast_to(mortar, (h, w))] = _jitter(rng, (205, 198, 185), 0.05, 4)
        return rgb
    if name == "road":
        base = _jitter(rng, (88, 88, 92), 0.12, 4)
        blotch = _upsampled_noise(rng, h, w, max(3, h // 6), max(3, w // 6))
        light = 1 + 0.06 * blotch + 0.13 * rng.standard_normal((h, w)).astype(np.float32)
        return base * light[..., None]
    raise SyntheticError(f"unknown stuff kind {name!r}")
