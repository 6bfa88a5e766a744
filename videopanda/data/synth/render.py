"""Scenes to pixels. Rendering is a pure function of the `Scene` (its seed drives the noise), so a clip can be
rendered again instead of stored: the in-memory training stream does exactly that."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .scene import (
    _BG_RANGE,
    _OUTLINE_PX,
    _SHAPE_SCALE,
    _WIDE_BG_RANGE,
    BACKGROUNDS,
    COLOURS,
    OUTLINES,
    WIDE_BACKGROUNDS,
    Scene,
    SceneObject,
)

__all__ = ["render_scene"]

_STAR_INNER = 0.45  # inner/outer radius; chunkier than a regular pentagram (0.38) so small stars stay readable


def _background_image(scene: Scene) -> np.ndarray:
    """Static background [H, W, 3] float32 in pixel values, before per-frame flicker."""
    p, size = scene.background_params, scene.size
    a, b = np.asarray(p["colour_a"], np.float32), np.asarray(p["colour_b"], np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)  # [H, W] each
    along = xs * math.cos(p["angle"]) + ys * math.sin(p["angle"])  # [H, W] pixel distance along the angle
    rng = np.random.default_rng(scene.seed)
    if scene.background == "checker":
        weight = ((xs // p["period"] + ys // p["period"]) % 2).astype(np.float32)
    elif scene.background == "stripes":
        weight = 0.5 + 0.5 * np.sin(2 * math.pi * along / p["period"])
    elif scene.background == "gradient":
        weight = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif scene.background in WIDE_BACKGROUNDS[len(BACKGROUNDS):]:
        weight = _wide_weight(scene.background, p, xs, ys, along, rng)
    else:  # "noise": blocky value noise, upsampled so the encoder spends few bits on it
        cells = rng.random((size // 4 + 1, size // 4 + 1), dtype=np.float32)
        weight = np.kron(cells, np.ones((4, 4), np.float32))[:size, :size]
    image = a + (b - a) * weight[..., None]  # [H, W, 3]
    return image + rng.normal(0, p["texture_std"], (size, size, 1)).astype(np.float32)


def _wide_weight(kind: str, p: dict[str, Any], xs: np.ndarray, ys: np.ndarray, along: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Blend weight [H, W] in [0, 1] (0 is colour_a) of a background kind only wide scenes use."""
    period, size = p["period"], xs.shape[0]
    across = -xs * math.sin(p["angle"]) + ys * math.cos(p["angle"])  # [H, W] pixel distance across the angle
    if kind == "hatch":  # thin lines along the angle, crossed at right angles half of the time
        lines = (along % period) < p["fill"] * period
        if p["cross"]:
            lines |= (across % period) < p["fill"] * period
        return lines.astype(np.float32)
    if kind == "bands":  # hard-edged stripes: a square wave where "stripes" is a sine
        return ((along // (period / 2)) % 2).astype(np.float32)
    if kind == "dots":  # polka dots on a rotated square grid
        u, v = along % period - period / 2, across % period - period / 2
        return (u * u + v * v <= (p["fill"] * period) ** 2).astype(np.float32)
    if kind in ("rings", "radial"):  # around a centre that may lie outside the frame
        cx, cy = (c * size for c in p["centre"])
        rho = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)  # [H, W]
        if kind == "rings":
            return 0.5 + 0.5 * np.cos(2 * math.pi * rho / period)
        return (rho - rho.min()) / max(float(rho.max() - rho.min()), 1e-6)
    if kind == "blotches":  # smooth low-frequency value noise: random values every `cell` pixels, interpolated
        cell = p["cell"]
        grid = rng.random((size // cell + 2, size // cell + 2), dtype=np.float32)
        pos = (np.arange(size, dtype=np.float32) + 0.5) / cell
        i, f = pos.astype(np.int64), pos - np.floor(pos)
        f = f * f * (3 - 2 * f)  # smoothstep: no visible creases at the control points
        rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]  # [H, cells] interpolated down the columns
        weight = rows[:, i] * (1 - f) + rows[:, i + 1] * f  # [H, W]
        return (weight - weight.min()) / max(float(weight.max() - weight.min()), 1e-6)
    if kind == "plain":
        return np.zeros_like(xs)
    raise ValueError(f"background must be one of {WIDE_BACKGROUNDS}, got {kind!r}")


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape centred at the origin, from pixel offsets dx, dy that broadcast together.

    Triangles point up and stars have a point up; both are exact polygons built from half-planes.
    """
    r = radius * _SHAPE_SCALE[shape]
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= r
    if shape == "triangle":  # equilateral with circumradius r: three edges at distance r/2 from the centre
        return (dy <= r / 2) & (math.sqrt(3) / 2 * np.abs(dx) - dy / 2 <= r / 2)
    # star: fold the angle into one of 10 mirror-symmetric wedges, then test one edge (outer tip -> inner corner)
    wedge = math.pi / 5
    theta = np.arctan2(dy, dx) + math.pi / 2  # 0 points up (image y grows downwards)
    folded = np.abs((theta + wedge) % (2 * wedge) - wedge)  # angle from the nearest tip, in [0, pi/5]
    rho = np.sqrt(dx * dx + dy * dy)
    px, py = rho * np.cos(folded), rho * np.sin(folded)
    tip, inner = (r, 0.0), (r * _STAR_INNER * math.cos(wedge), r * _STAR_INNER * math.sin(wedge))
    ex, ey = inner[0] - tip[0], inner[1] - tip[1]
    return ex * (py - tip[1]) - ey * (px - tip[0]) >= 0  # on the centre's side of the edge


def _draw_object(frames: np.ndarray, obj: SceneObject, size: int, outline: str = "dark",
                 times: np.ndarray | None = None, num_frames: int | None = None) -> None:
    """Paints one object (outline, then fill) in place on its visible frames of frames [T, H, W, 3].

    Masks are evaluated on a small window that follows the object, not the whole frame: ~20x less work.

    Args:
        frames: The frames to paint on.
        obj: The object.
        size: Frame height and width in pixels.
        outline: A key of OUTLINES.
        times: Clip frame number of each entry of `frames` (default: 0, 1, ..., T - 1, i.e. the whole clip).
        num_frames: Length of the clip (default: T).
    """
    num_frames = frames.shape[0] if num_frames is None else num_frames
    times = np.arange(frames.shape[0]) if times is None else times
    lo, hi = obj.appear_frame, obj.end_frame(num_frames)
    shown = np.flatnonzero((times >= lo) & (times < hi))  # [T_vis] entries of `frames` on which it is drawn
    if not shown.size:
        return
    centres = obj.centres(num_frames)[times[shown]] * size  # [T_vis, 2] in pixels
    width = min(size, 2 * math.ceil(obj.extent(size) * size) + 2)
    corner = np.clip(np.floor(centres).astype(np.int64) - width // 2, 0, size - width)  # [T_vis, 2] window (x, y)
    local = np.arange(width)
    xs = corner[:, 0, None] + local  # [T_vis, w] pixel columns
    ys = corner[:, 1, None] + local  # [T_vis, w] pixel rows
    dx = (xs + 0.5 - centres[:, 0, None])[:, None, :]  # [T_vis, 1, w]
    dy = (ys + 0.5 - centres[:, 1, None])[:, :, None]  # [T_vis, w, 1]
    frame_idx = np.broadcast_to(shown[:, None, None], (shown.size, width, width))
    rows, cols = np.broadcast_to(ys[:, :, None], frame_idx.shape), np.broadcast_to(xs[:, None, :], frame_idx.shape)
    radius = obj.size * size
    light = None
    if obj.shading is not None:  # in the frame's own axes: the light does not turn with the shape
        angle, darkest, brightest = obj.shading
        reach = radius * _SHAPE_SCALE[obj.shape]
        ramp = np.clip((dx * math.cos(angle) + dy * math.sin(angle)) / reach, -1.0, 1.0)  # [T_vis, w, w]
        light = (darkest + brightest) / 2 + (brightest - darkest) / 2 * ramp
    if obj.rotation:  # rotate the pixel offsets into the shape's own frame (y grows downwards)
        cos, sin = math.cos(obj.rotation), math.sin(obj.rotation)
        dx, dy = cos * dx - sin * dy, sin * dx + cos * dy
    layers = [(radius, COLOURS[obj.colour])]
    if OUTLINES[outline] is not None:
        layers.insert(0, (radius + _OUTLINE_PX / _SHAPE_SCALE[obj.shape], OUTLINES[outline]))
    for i, (r, rgb) in enumerate(layers):
        mask = _shape_mask(obj.shape, dx, dy, r)  # [T_vis, w, w]
        if light is not None and i == len(layers) - 1:  # lit fill, capped where a channel would saturate (hue kept)
            factor = np.minimum(light[mask], 255 / max(rgb))  # [N]
            rgb = np.rint(factor[:, None] * np.asarray(rgb, np.float64)).astype(np.uint8)  # [N, 3]
        frames[frame_idx[mask], rows[mask], cols[mask]] = rgb


def render_scene(scene: Scene, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Renders a scene deterministically (fully vectorised over pixels and frames).

    Args:
        scene: The scene; its seed drives the background noise.
        indices: Only these frames of the clip, in this order (repeats allowed); the result equals
            ``render_scene(scene)[indices]``. Wide scenes render just those frames (each frame's flicker has its own
            seed); narrow ones render the whole clip and select, since version 1 drew one flicker for all frames.

    Returns:
        Frames [T, H, W, 3] (T = len(indices) when given) uint8 RGB with H = W = scene.size. Object pixels hold
        exactly COLOURS[colour], except on objects with shading.
    """
    t, size = scene.num_frames, scene.size
    times = None
    if not scene.wide:  # version 1: one generator for the whole clip's flicker (frames are selected at the end)
        flicker = np.random.default_rng([scene.seed, 1]).standard_normal((t, size, size, 1), dtype=np.float32)
    else:
        times = np.arange(t) if indices is None else np.asarray(indices, np.int64)
        if times.ndim != 1 or not times.size or times.min() < 0 or times.max() >= t:
            raise ValueError(f"indices must be a non-empty list of frame numbers in [0, {t}), got {indices}")
        flicker = np.empty((times.size, size, size, 1), np.float32)
        for j, k in enumerate(times.tolist()):  # one generator per frame, so any subset renders alone
            np.random.default_rng([scene.seed, 1, k]).standard_normal((size, size, 1), dtype=np.float32,
                                                                      out=flicker[j])
    flicker *= scene.background_params["flicker_std"]
    frames = _background_image(scene)[None] + flicker  # [T', H, W, 3]
    lo, hi = _WIDE_BG_RANGE if scene.wide else _BG_RANGE
    frames = np.clip(frames, lo - 10, hi + 10, out=frames).astype(np.uint8)  # truncation instead of rint: cheaper
    for obj in scene.objects:
        _draw_object(frames, obj, size, scene.outline, times, t)
    return frames if times is not None or indices is None else frames[np.asarray(indices, np.int64)]
