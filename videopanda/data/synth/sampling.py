"""Random scenes whose every question has one answer: distinct objects on trajectories that never come too close,
over a muted background; `wide=True` draws from wider ranges. The same generator state gives the same scene,
so a change to what is drawn, or in which order, changes every clip of a seed (and SYNTH_VERSION)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from .scene import (
    _BG_RANGE,
    _WIDE_BG_RANGE,
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    OUTLINES,
    SHAPES,
    WIDE_BACKGROUNDS,
    Scene,
    SceneObject,
)

__all__ = ["sample_scene"]

_SIZE_RANGE = (0.07, 0.10)  # object radius as a fraction of the frame
_DISPLACEMENT_RANGE = (0.3, 0.5)  # whole-clip travel as a fraction of the frame: motion must be obvious
_STAGGER_P = 0.75  # chance that a multi-object clip has one clear first object (feeds the rarer "order" family)
_EVENT_P = 0.2  # chance, per object in other clips, of appearing late and, separately, of disappearing early
_MAX_TRIES = 40


def _sample_timing(rng: np.random.Generator, count: int, num_frames: int) -> list[tuple[int, int | None]]:
    """Appear/disappear frames per object; every object stays visible for at least half the clip.

    Multi-object clips are "staggered" with probability _STAGGER_P: object 0 is there from frame 0 and the others
    appear at least T/4 frames later, which is what makes the "order" question unambiguous.
    """
    quarter, half = math.ceil(num_frames / 4), max(1, num_frames // 2)
    staggered = count >= 2 and rng.random() < _STAGGER_P
    timing = []
    for i in range(count):
        if staggered:
            appear = 0 if i == 0 else int(rng.integers(quarter, max(quarter, half) + 1))
        else:
            appear = int(rng.integers(1, half + 1)) if rng.random() < _EVENT_P else 0
        appear = min(appear, num_frames - 1)
        first_gone = appear + math.ceil(num_frames / 2)
        disappear = None
        if rng.random() < _EVENT_P and first_gone < num_frames:
            disappear = int(rng.integers(first_gone, num_frames))
        timing.append((appear, disappear))
    return timing


def _too_close(a: SceneObject, b: SceneObject, num_frames: int, size: int) -> bool:
    """True if two objects overlap noticeably on any frame where both are drawn."""
    lo = max(a.appear_frame, b.appear_frame)
    hi = min(a.end_frame(num_frames), b.end_frame(num_frames))
    if lo >= hi:
        return False
    gap = np.linalg.norm(a.centres(num_frames)[lo:hi] - b.centres(num_frames)[lo:hi], axis=1)  # [hi - lo]
    # 0.9 allows the outlines to touch a little but keeps every centre pixel uncovered.
    return bool(gap.min() < 0.9 * (a.extent(size) + b.extent(size)))


def _sample_object(
    rng: np.random.Generator, shape: str, colour: str, timing: tuple[int, int | None], num_frames: int, size: int,
    ranges: tuple[Any, ...] = (_SIZE_RANGE, _DISPLACEMENT_RANGE),
) -> SceneObject:
    """One object with a start and speed that keep it fully inside the frame for the whole clip.

    `ranges` is (radius range, travel range) or, for wide scenes, (radius range, travel range, largest square tilt).
    """
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    radius = float(rng.uniform(*ranges[0]))
    rotation = 0.0
    if len(ranges) > 2:  # wide: triangles and stars at any angle, squares tilted a little
        rotation = float(rng.uniform(-1, 1)) * (math.pi if shape in ("triangle", "star") else ranges[2])
    probe = SceneObject(shape, colour, (0.5, 0.5), direction, 0.0, radius, rotation=rotation)
    margin = probe.extent(size) + 0.01
    travel = min(float(rng.uniform(*ranges[1])), 1.0 - 2 * margin - 0.02)  # large objects: less room to travel
    along = float(rng.uniform(margin, 1.0 - margin - travel))  # coordinate where the motion starts, pre-flip
    across = float(rng.uniform(margin, 1.0 - margin))
    if direction in ("left", "up"):
        along = 1.0 - along
    start = (along, across) if direction in ("left", "right") else (across, along)
    speed = travel / max(num_frames - 1, 1)
    return SceneObject(shape, colour, start, direction, speed, radius, timing[0], timing[1], rotation)


def _place_objects(
    rng: np.random.Generator, pairs: list[tuple[str, str]], timing: list[tuple[int, int | None]], t: int, size: int,
    ranges: tuple[Any, ...] = (_SIZE_RANGE, _DISPLACEMENT_RANGE),
) -> list[SceneObject] | None:
    """Rejection-sample non-overlapping trajectories; None if some object found no free path."""
    placed: list[SceneObject] = []
    for (shape, colour), when in zip(pairs, timing):
        for _ in range(_MAX_TRIES):
            obj = _sample_object(rng, shape, colour, when, t, size, ranges)
            if not any(_too_close(obj, other, t, size) for other in placed):
                placed.append(obj)
                break
        else:
            return None
    return placed


def _sample_objects(rng: np.random.Generator, count: int, num_frames: int, size: int,
                    ranges: tuple[Any, ...] = (_SIZE_RANGE, _DISPLACEMENT_RANGE),
                    ) -> list[SceneObject]:
    """`count` objects with distinct (shape, colour) pairs; retries with one object fewer if they do not fit.

    A lone object always fits, so this terminates; in practice almost every clip keeps its drawn count.
    """
    all_pairs = [(s, c) for s in SHAPES for c in COLOURS]
    while True:
        chosen = rng.choice(len(all_pairs), size=count, replace=False)
        pairs = [all_pairs[int(i)] for i in chosen]
        timing = _sample_timing(rng, count, num_frames)
        for _ in range(_MAX_TRIES // 4):
            objects = _place_objects(rng, pairs, timing, num_frames, size, ranges)
            if objects is not None:
                return objects
        count -= 1


def _sample_background(rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """A background kind and its muted colours: two nearby greys with a slight random tint."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    lo, hi = _BG_RANGE
    base = rng.uniform(lo + 15, hi - 30)
    tint = rng.uniform(-10, 10, size=3)
    colour_a = np.clip(base + tint, lo, hi)
    colour_b = np.clip(colour_a + rng.uniform(12, 25) * rng.choice([-1, 1]), lo, hi)
    params: dict[str, Any] = {
        "colour_a": [round(float(c), 2) for c in colour_a],
        "colour_b": [round(float(c), 2) for c in colour_b],
        "angle": round(float(rng.uniform(0, math.pi)), 4),
        "period": int(rng.integers(6, 24)),  # pixels, for checker cells and stripes
        "texture_std": round(float(rng.uniform(3, 8)), 2),  # static grain
        "flicker_std": round(float(rng.uniform(1, 3)), 2),  # per-frame noise
    }
    return kind, params


# Wider ranges for `sample_scene(..., wide=True)`: smaller and larger objects, slower and faster motion, and a
# random outline. Version 1 of the default model was trained on the narrow ranges only and an independent renderer
# showed it did not generalise (bench/results/alt_synth/).
WIDE_SIZE_RANGE = (0.045, 0.15)
WIDE_DISPLACEMENT_RANGE = (0.15, 0.6)
WIDE_SQUARE_TILT = math.radians(15)  # triangles and stars take any rotation; a square tilted 45 degrees is a diamond
WIDE_SHADING_P = 0.5  # chance, per object of a wide scene, of a lighting gradient (SceneObject.shading)


def _sample_wide_background(rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """A background kind from WIDE_BACKGROUNDS, with a random mean brightness and contrast.

    The two colours stay greyish (their channels at most ~30 apart), so no background comes close to a saturated
    object colour; the mean ranges from dark to light grey and the contrast from barely visible to strong.
    """
    kind = WIDE_BACKGROUNDS[int(rng.integers(len(WIDE_BACKGROUNDS)))]
    lo, hi = _WIDE_BG_RANGE
    contrast = float(rng.uniform(6, 50)) * float(rng.choice([-1, 1]))
    base = rng.uniform(lo + 5 + max(0.0, -contrast), hi - 5 - max(0.0, contrast))
    colour_a = np.clip(base + rng.uniform(-10, 10, size=3), lo, hi)  # a slight tint, as in version 1
    colour_b = np.clip(colour_a + contrast + rng.uniform(-4, 4, size=3), lo, hi)  # and a little of its own
    params: dict[str, Any] = {
        "colour_a": [round(float(c), 2) for c in colour_a],
        "colour_b": [round(float(c), 2) for c in colour_b],
        "angle": round(float(rng.uniform(0, math.pi)), 4),
        "period": int(rng.integers(6, 33)),  # pixels: checker cells, stripes, bands, hatching, dots, rings
        "texture_std": round(float(rng.uniform(2, 10)), 2),
        "flicker_std": round(float(rng.uniform(0.5, 4)), 2),
        "fill": round(float(rng.uniform(0.15, 0.4)), 3),  # hatch line width and dot radius, relative to the period
        "cross": bool(rng.random() < 0.5),  # hatch: a second set of lines at right angles
        "centre": [round(float(c), 3) for c in rng.uniform(-0.3, 1.3, size=2)],  # rings and radial, frame fractions
        "cell": int(rng.integers(12, 41)),  # blotches: pixels between the random control values
    }
    return kind, params


def _sample_shading(rng: np.random.Generator) -> tuple[float, float, float] | None:
    """SceneObject.shading for one wide-scene object: None (flat) or a light direction and a dark-to-bright ramp."""
    if rng.random() >= WIDE_SHADING_P:
        return None
    angle = float(rng.uniform(0, 2 * math.pi))
    return round(angle, 4), round(float(rng.uniform(0.6, 0.72)), 3), round(float(rng.uniform(1.08, 1.2)), 3)


def _pick(rng: np.random.Generator, items: list | tuple) -> Any:
    return items[int(rng.integers(len(items)))]


def _check_clip_args(*, num_frames: int, size: int, fps: int) -> None:
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if size < 32 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and >= 32, got {size}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")


def sample_scene(rng: np.random.Generator, *, num_frames: int = 16, size: int = 128, fps: int = 8,
                 wide: bool = False) -> Scene:
    """Draws a random scene whose questions are all answerable.

    Args:
        rng: Source of all randomness; the same generator state gives the same scene.
        num_frames: T, at least 2.
        size: Frame height and width in pixels.
        fps: Frame rate stored in the scene (used by write_video via generate).
        wide: Draw object sizes, travel and rotation from the wide ranges, a random outline, lit (shaded) objects,
            a background from WIDE_BACKGROUNDS and questions from the extra phrasings too (training for
            robustness); False keeps version 1's scenes exactly.

    Returns:
        A Scene with 1 to 5 objects of distinct (colour, shape) pairs on non-overlapping trajectories.
    """
    _check_clip_args(num_frames=num_frames, size=size, fps=fps)
    ranges = (WIDE_SIZE_RANGE, WIDE_DISPLACEMENT_RANGE, WIDE_SQUARE_TILT) if wide else (_SIZE_RANGE,
                                                                                       _DISPLACEMENT_RANGE)
    objects = _sample_objects(rng, int(rng.integers(1, 6)), num_frames, size, ranges)
    background, params = _sample_wide_background(rng) if wide else _sample_background(rng)
    seed = int(rng.integers(2**31 - 1))
    if not wide:  # version 1: nothing below is drawn, so the generator state matches it exactly
        return Scene(tuple(objects), background, params, num_frames, size, fps, seed, "dark")
    outline = _pick(rng, tuple(OUTLINES))
    objects = [replace(o, shading=_sample_shading(rng)) for o in objects]
    return Scene(tuple(objects), background, params, num_frames, size, fps, seed, outline, wide=True)
