"""Procedural synthetic video-QA clips, to train and evaluate the small default model without downloads.

Each clip shows one to five coloured shapes that move in straight lines over a muted textured background; some
appear or disappear mid-clip. Because the scene parameters are known exactly, every question has one canonical
short answer. Seven question families probe different skills:

- ``colour``: "What colour is the triangle?" -> "red" (asked only about a shape that occurs once)
- ``shape``: "What shape is the blue object?" -> "circle" (asked only about a colour that occurs once)
- ``count``: "How many objects are there?" -> "three" (every object visible at any time counts)
- ``direction``: "Which direction does the red circle move?" -> "left" | "right" | "up" | "down"
- ``order``: "Which object appears first?" -> "the red circle" (asked only when exactly one object is clearly first)
- ``appearance``: "Is there a yellow star in the video?" -> "yes" | "no" (50/50, the "no" object is absent)
- ``caption``: "Describe the video." -> "a red circle moves left and a blue square appears and moves up."

Coordinates are fractions of the frame in [0, 1], x to the right and y downwards (so "up" decreases y). Frame
``t`` of an object lies at ``start + unit(direction) * speed * t``, and it is drawn for
``appear_frame <= t < disappear_frame``.

``generate`` writes LLaVA-style train/val JSON and MSVD-QA-style test JSON. Clip ``k`` draws everything from its own
generator seeded with ``(seed, k)``, so the output does not depend on the number of workers, and the JSON is
byte-identical between runs with the same arguments.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "FAMILIES",
    "SHAPES",
    "SYNTH_VERSION",
    "WIDE_BACKGROUNDS",
    "Scene",
    "SceneObject",
    "caption",
    "generate",
    "make_questions",
    "render_scene",
    "sample_scene",
    "write_video",
]

SYNTH_VERSION = "1"
"""Bumped whenever the same seed would produce different scenes, questions or pixels; recorded in meta.json."""

SHAPES = ("circle", "square", "triangle", "star")
# Saturated and far apart (min pairwise RGB distance > 110), so they survive yuv420p encoding and never look like
# the muted background (every background channel stays within _BG_RANGE).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (160, 60, 220),
    "orange": (250, 140, 20),
}
DIRECTIONS = ("left", "right", "up", "down")
FAMILIES = ("colour", "shape", "count", "direction", "order", "appearance", "caption")
BACKGROUNDS = ("noise", "checker", "stripes", "gradient")
# Wide scenes (`sample_scene(..., wide=True)`) draw from these; version 1 (narrow) only ever uses BACKGROUNDS.
WIDE_BACKGROUNDS = BACKGROUNDS + ("hatch", "bands", "dots", "blotches", "rings", "radial", "plain")

_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
OUTLINES: dict[str, tuple[int, int, int] | None] = {"dark": (20, 20, 20), "light": (200, 200, 200), "none": None}
_OUTLINE_PX = 1.5
# Drawn extent relative to SceneObject.size, chosen so the four shapes cover similar areas.
_SHAPE_SCALE = {"circle": 1.0, "square": 0.9, "triangle": 1.25, "star": 1.3}
_STAR_INNER = 0.45  # inner/outer radius; chunkier than a regular pentagram (0.38) so small stars stay readable
_BG_RANGE = (35, 115)  # background channel values: muted and mid-dark, far from the saturated object colours
_WIDE_BG_RANGE = (20, 160)  # wide scenes: darker and brighter greys too, still far from the object colours
_SIZE_RANGE = (0.07, 0.10)  # object radius as a fraction of the frame
_DISPLACEMENT_RANGE = (0.3, 0.5)  # whole-clip travel as a fraction of the frame: motion must be obvious
_STAGGER_P = 0.75  # chance that a multi-object clip has one clear first object (feeds the rarer "order" family)
_EVENT_P = 0.2  # chance, per object in other clips, of appearing late and, separately, of disappearing early
_MAX_TRIES = 40
_VIDEO_DIR = "videos"
_PARAMS_FILE = ".synth_params.json"

_PHRASES: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is the {shape}?",
        "What color is the {shape} in the video?",
        "What is the colour of the {shape}?",
        "Which color does the {shape} have?",
    ),
    "shape": (
        "What shape is the {colour} object?",
        "What is the shape of the {colour} object in the video?",
        "Which shape is {colour}?",
        "What kind of shape is the {colour} one?",
    ),
    "count": (
        "How many objects are there?",
        "How many shapes appear in the video?",
        "How many objects can be seen in the video?",
        "Count the shapes in the video.",
    ),
    "direction": (
        "Which direction does the {obj} move?",
        "In which direction is the {obj} moving?",
        "Where does the {obj} move: left, right, up or down?",
        "What direction is the {obj} travelling in?",
    ),
    "order": (
        "Which object appears first?",
        "Which shape is visible first in the video?",
        "What is the first object to appear?",
        "Which object can be seen before the others?",
    ),
    "appearance": (
        "Does {obj} appear?",
        "Is there {obj} in the video?",
        "Can you see {obj} in the video?",
        "Does the video contain {obj}?",
    ),
    "caption": (
        "Describe the video.",
        "What happens in the video?",
        "Describe what you see in this video.",
        "Give a short description of the video.",
    ),
}
# Extra wordings that wide scenes pick from as well (same answers); narrow scenes only ever use _PHRASES. The
# placeholders match _PHRASES: {shape} and {colour} are bare words, {obj} is a name ("red circle"), which
# "appearance" receives with its article ("a red circle").
_WIDE_PHRASES: dict[str, tuple[str, ...]] = {
    "colour": (
        "Tell me the colour of the {shape}.",
        "What colour does the {shape} have?",
        "The {shape} is what colour?",
        "Name the colour of the {shape}.",
        "What is the color of the {shape} in this clip?",
        "Can you tell what color the {shape} is?",
        "Identify the colour of the {shape}.",
        "Which colour is the {shape} shown in?",
        "What colour is the {shape} in this clip?",
        "How is the {shape} coloured?",
    ),
    "shape": (
        "Tell me the shape of the {colour} object.",
        "What is the {colour} shape?",
        "Which shape has the colour {colour}?",
        "The {colour} object is what shape?",
        "Name the shape of the {colour} object.",
        "What form does the {colour} object have?",
        "Identify the shape that is {colour}.",
        "What kind of object is {colour} in this clip?",
        "Which figure is {colour}?",
        "What does the {colour} object look like: a circle, square, triangle or star?",
    ),
    "count": (
        "What number of shapes are shown?",
        "How many different shapes appear in the clip?",
        "In total, how many objects appear?",
        "Count all the objects in the clip.",
        "How many distinct objects does the video show?",
        "How many shapes can you count in this clip?",
        "What is the total number of objects in the video?",
        "Tell me how many shapes there are in the video.",
        "How many moving shapes are in the clip?",
        "How many objects show up in this video?",
    ),
    "direction": (
        "Which way is the {obj} going?",
        "Which way does the {obj} travel?",
        "Where is the {obj} heading?",
        "Tell me the direction the {obj} moves in.",
        "In what direction does the {obj} go?",
        "Is the {obj} moving left, right, up or down?",
        "What is the direction of motion of the {obj}?",
        "Towards which edge of the frame does the {obj} move?",
        "How does the {obj} move: left, right, up or down?",
        "Which way does the {obj} move across the frame?",
    ),
    "order": (
        "Name the object that shows up first.",
        "Which shape shows up first?",
        "What appears first in the video?",
        "Which object is there from the start?",
        "What is the earliest object to appear?",
        "Which object is seen first in the clip?",
        "Tell me which object appears before all the others.",
        "Which object is the first one visible?",
        "Which of the objects appears earliest?",
        "Which shape is shown at the very beginning of the clip?",
    ),
    "appearance": (
        "Is {obj} visible at any point?",
        "Does {obj} show up in the clip?",
        "Is there {obj} anywhere in this clip?",
        "Do you see {obj}?",
        "Does {obj} appear at any time in the video?",
        "Can {obj} be seen in the clip?",
        "Is {obj} shown in the video?",
        "Does the clip show {obj}?",
        "Is {obj} one of the objects in the video?",
        "Does {obj} ever appear in this video?",
    ),
    "caption": (
        "Summarize the clip.",
        "Describe what happens in this clip.",
        "What is going on in the video?",
        "Briefly describe the video.",
        "Tell me what happens in the clip.",
        "Give a brief summary of the video.",
        "What does the video show?",
        "Describe the clip in one sentence.",
        "Explain what you see in the video.",
        "Write a short caption for this video.",
    ),
}


@dataclass(frozen=True)
class SceneObject:
    """One moving shape.

    Attributes:
        shape: One of SHAPES.
        colour: A key of COLOURS.
        start: Centre (x, y) at frame 0, as fractions of the frame.
        direction: One of DIRECTIONS; the motion is along one axis at constant speed.
        speed: Distance travelled per frame, as a fraction of the frame.
        size: Radius, as a fraction of the frame (see _SHAPE_SCALE for the drawn extent per shape).
        appear_frame: First frame on which the object is drawn.
        disappear_frame: First frame on which it is no longer drawn; None keeps it to the end of the clip.
        rotation: In-plane rotation in radians, counter-clockwise (0 in version 1: triangles and stars point up).
        shading: None draws the flat colour (version 1). (angle, darkest, brightest) lights the object: its fill
            colour is multiplied by a factor that ramps linearly from `darkest` to `brightest` across the drawn
            extent, along `angle` (radians, x right and y down), never past the brightest value that keeps the hue.
    """

    shape: str
    colour: str
    start: tuple[float, float]
    direction: str
    speed: float
    size: float
    appear_frame: int = 0
    disappear_frame: int | None = None
    rotation: float = 0.0
    shading: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {self.colour!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.appear_frame < 0:
            raise ValueError(f"appear_frame must be >= 0, got {self.appear_frame}")
        if self.disappear_frame is not None and self.disappear_frame <= self.appear_frame:
            raise ValueError(
                f"disappear_frame must be > appear_frame ({self.appear_frame}), got {self.disappear_frame}"
            )
        if self.shading is not None and not 0 < self.shading[1] <= self.shading[2]:
            raise ValueError(f"shading must be (angle, darkest, brightest) with 0 < darkest <= brightest, got "
                             f"{self.shading}")

    @property
    def name(self) -> str:
        """The unambiguous reference used in questions, e.g. "red circle" (pairs are distinct within a clip)."""
        return f"{self.colour} {self.shape}"

    def end_frame(self, num_frames: int) -> int:
        """Exclusive last visible frame, resolving disappear_frame=None to the clip length."""
        return num_frames if self.disappear_frame is None else self.disappear_frame

    def centres(self, num_frames: int) -> np.ndarray:
        """Centre (x, y) at every frame of the clip, visible or not, as an array [T, 2] of frame fractions."""
        unit = np.asarray(_UNIT[self.direction])
        return np.asarray(self.start) + np.arange(num_frames)[:, None] * self.speed * unit  # [T, 2]

    def extent(self, size: int) -> float:
        """Drawn radius including the outline, as a fraction of a frame of `size` pixels."""
        spread = abs(math.cos(self.rotation)) + abs(math.sin(self.rotation)) if self.shape == "square" else 1.0
        return self.size * _SHAPE_SCALE[self.shape] * spread + _OUTLINE_PX / size


@dataclass(frozen=True)
class Scene:
    """Everything needed to render a clip and answer questions about it; rendering is a pure function of it.

    Attributes:
        objects: The shapes, drawn in order (later ones on top).
        background: One of BACKGROUNDS.
        background_params: Kind-specific parameters (colours, period, angle, noise levels); JSON-friendly.
        num_frames: T.
        size: Frame height and width in pixels.
        fps: Frame rate used when the clip is written.
        seed: Seeds the background noise, so render_scene needs no generator.
        outline: Colour of the 1.5-pixel outline around each shape: "dark" (version 1's only choice), "light" or
            "none".
        wide: Drawn by `sample_scene(..., wide=True)`: questions also use the extra wide phrasings, the background
            may be darker or brighter (_WIDE_BG_RANGE), and each frame's flicker has its own seed, so that
            `render_scene(scene, indices)` renders only the frames asked for. False is version 1.
    """

    objects: tuple[SceneObject, ...]
    background: str
    background_params: dict[str, Any] = field(default_factory=dict)
    num_frames: int = 16
    size: int = 128
    fps: int = 8
    seed: int = 0
    outline: str = "dark"
    wide: bool = False

    def __post_init__(self) -> None:
        if self.outline not in OUTLINES:
            raise ValueError(f"outline must be one of {tuple(OUTLINES)}, got {self.outline!r}")
        kinds = WIDE_BACKGROUNDS if self.wide else BACKGROUNDS
        if self.background not in kinds:
            raise ValueError(f"background must be one of {kinds}, got {self.background!r}")
        if not 1 <= len(self.objects) <= 5:
            raise ValueError(f"objects must hold 1 to 5 objects, got {len(self.objects)}")
        pairs = [o.name for o in self.objects]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"objects must have distinct (colour, shape) pairs, got {pairs}")
        for obj in self.objects:
            if obj.end_frame(self.num_frames) > self.num_frames or obj.appear_frame >= self.num_frames:
                raise ValueError(f"{obj.name} is not visible within num_frames={self.num_frames}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON dumps and debugging."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: list | tuple) -> Any:
    return items[int(rng.integers(len(items)))]


def _unique(objects: tuple[SceneObject, ...], attr: str) -> list[SceneObject]:
    """Objects whose `attr` value ("shape" or "colour") occurs once in the clip, so a question about it is clear."""
    counts = Counter(getattr(o, attr) for o in objects)
    return [o for o in objects if counts[getattr(o, attr)] == 1]


def _first_object(scene: Scene) -> SceneObject | None:
    """The only object visible on frame 0 if all others appear at least T/4 frames later, else None."""
    if len(scene.objects) < 2:
        return None
    early = [o for o in scene.objects if o.appear_frame == 0]
    later = [o.appear_frame for o in scene.objects if o.appear_frame > 0]
    if len(early) != 1 or min(later) < math.ceil(scene.num_frames / 4):
        return None
    return early[0]


def _absent_pair(scene: Scene, rng: np.random.Generator) -> str:
    """A "colour shape" not in the clip; half the time one that shares a colour or shape with it (hard negative)."""
    present = {o.name for o in scene.objects}
    absent = [f"{c} {s}" for s in SHAPES for c in COLOURS if f"{c} {s}" not in present]
    near = [n for n in absent if any(o.colour in n.split() or o.shape in n.split() for o in scene.objects)]
    return _pick(rng, near if near and rng.random() < 0.5 else absent)


def _with_article(name: str) -> str:
    """Adds "a" or "an", e.g. "orange star" -> "an orange star"."""
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _object_clause(obj: SceneObject, num_frames: int) -> str:
    """E.g. "a red circle appears and moves left then disappears"."""
    action = f"moves {obj.direction}"
    if obj.appear_frame > 0:
        action = f"appears and {action}"
    if obj.end_frame(num_frames) < num_frames:
        action = f"{action} then disappears"
    return f"{_with_article(obj.name)} {action}"


def caption(scene: Scene) -> str:
    """Templated description listing the objects by appearance time, e.g. "a red circle moves left and ..."."""
    ordered = sorted(scene.objects, key=lambda o: o.appear_frame)
    clauses = [_object_clause(o, scene.num_frames) for o in ordered]
    head = ", ".join(clauses[:-1])
    return (f"{head} and {clauses[-1]}" if head else clauses[-1]) + "."


def _question(family: str, scene: Scene, rng: np.random.Generator) -> dict[str, str] | None:
    """One question of `family`, or None when the clip cannot support it unambiguously."""
    phrases = _PHRASES[family] + _WIDE_PHRASES[family] if scene.wide else _PHRASES[family]
    objects, phrase = scene.objects, _pick(rng, phrases)
    if family == "colour":
        obj = _pick(rng, _unique(objects, "shape")) if _unique(objects, "shape") else None
        return None if obj is None else _qa(family, phrase.format(shape=obj.shape), obj.colour)
    if family == "shape":
        obj = _pick(rng, _unique(objects, "colour")) if _unique(objects, "colour") else None
        return None if obj is None else _qa(family, phrase.format(colour=obj.colour), obj.shape)
    if family == "count":
        return _qa(family, phrase, _NUMBER_WORDS[len(objects)])
    if family == "direction":
        obj = _pick(rng, objects)
        return _qa(family, phrase.format(obj=obj.name), obj.direction)
    if family == "order":
        first = _first_object(scene)
        return None if first is None else _qa(family, phrase, f"the {first.name}")
    if family == "appearance":
        present = rng.random() < 0.5
        name = _pick(rng, objects).name if present else _absent_pair(scene, rng)
        return _qa(family, phrase.format(obj=_with_article(name)), "yes" if present else "no")
    if family == "caption":
        return _qa(family, phrase, caption(scene))
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def _qa(family: str, question: str, answer: str) -> dict[str, str]:
    return {"family": family, "question": question, "answer": answer}


def make_questions(scene: Scene, rng: np.random.Generator) -> list[dict[str, str]]:
    """One question per family that the clip supports, in FAMILIES order.

    Args:
        scene: The clip; wide scenes (Scene.wide) pick each phrasing from the extra wide wordings as well, with
            the same answers.
        rng: Picks phrasings, the object asked about and the yes/no side of "appearance".

    Returns:
        Dicts {"family", "question", "answer"}; answers are short lowercase canonical strings. "count",
        "direction", "appearance" and "caption" are always present; "colour", "shape" and "order" only when
        unambiguous.
    """
    questions = (_question(family, scene, rng) for family in FAMILIES)
    return [q for q in questions if q is not None]


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _pick_codec() -> str:
    """libx264 where the PyAV build has it (smaller, better colour), else the always-built-in mpeg4."""
    import av  # lazily: rendering scenes needs no PyAV (e.g. the in-memory training stream)

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: int) -> None:
    """Writes frames as an mp4 at high quality so the object colours survive yuv420p encoding.

    The file appears atomically (written next to `path`, then renamed), so an interrupted run never leaves a
    truncated video that a resumed run would mistake for a finished one.

    Args:
        frames: [T, H, W, 3] uint8 RGB; H and W must be even (yuv420p).
        path: Destination .mp4 path; its parent must exist.
        fps: Frame rate.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frames height and width must be even for yuv420p, got {frames.shape[1:3]}")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    import av

    codec = _pick_codec()
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1  # parallelism comes from generate's workers
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 8 * frames.shape[1] * frames.shape[2] * fps  # ~1 bit/pixel: near-lossless for mpeg4
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _video_ok(path: Path, num_frames: int, size: int) -> bool:
    """True if `path` is a readable video with the expected frame size and count (for resuming)."""
    import av

    if not path.is_file():
        return False
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return (stream.width, stream.height, stream.frames) == (size, size, num_frames)
    except (av.FFmpegError, IndexError):  # unreadable or no video stream: render it again
        return False


def _write_json(path: Path, obj: Any) -> None:
    """Atomic, deterministic JSON write (fixed key order from the data, no timestamps)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Dataset generation
# ----------------------------------------------------------------------------------------------------------------


def _check_clip_args(*, num_frames: int, size: int, fps: int) -> None:
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if size < 32 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and >= 32, got {size}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")


def _check_args(n: int, seed: int, workers: int, splits: tuple[float, float, float]) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if len(splits) != 3 or min(splits) < 0 or splits[0] <= 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise ValueError(f"splits must be 3 non-negative fractions (train > 0) summing to 1, got {splits}")


def _clip_name(k: int) -> str:
    return f"synth_{k:06d}"


def _make_clip(job: tuple[int, int, dict[str, int], str, bool]) -> tuple[list[dict[str, str]], bool]:
    """Worker: samples clip k from rng (seed, k) and renders it unless a valid copy exists.

    Returns:
        (questions, rendered): rendered is False when an existing video was reused.
    """
    k, seed, clip_args, out_dir, reuse = job
    rng = np.random.default_rng([seed, k])
    scene = sample_scene(rng, **clip_args)
    questions = make_questions(scene, rng)
    path = Path(out_dir) / _VIDEO_DIR / f"{_clip_name(k)}.mp4"
    if reuse and _video_ok(path, scene.num_frames, scene.size):
        return questions, False
    write_video(render_scene(scene), path, scene.fps)
    return questions, True


def _split_of(n: int, seed: int, splits: tuple[float, float, float]) -> list[str]:
    """Split name per clip: exact counts from the fractions, assignment from a seed-fixed permutation.

    Val and test get at least one clip each when their fraction is positive and n leaves room for it.
    """
    sizes = [0, 0]
    for i, frac in enumerate(splits[1:]):
        sizes[i] = int(round(n * frac))
        if frac > 0 and sizes[i] == 0 and n - sum(sizes) > 1:
            sizes[i] = 1
    order = np.random.default_rng([seed, n, 0x5917]).permutation(n)
    names = ["train"] * n
    for k in order[: sizes[0]]:
        names[int(k)] = "val"
    for k in order[sizes[0] : sizes[0] + sizes[1]]:
        names[int(k)] = "test"
    return names


def _train_items(k: int, questions: list[dict[str, str]]) -> list[dict[str, Any]]:
    """LLaVA / Video-LLaVA single-turn items for one train or val clip."""
    name = _clip_name(k)
    return [
        {
            "id": f"{name}_{j}",
            "video": f"{_VIDEO_DIR}/{name}.mp4",
            "family": q["family"],
            "conversations": [
                {"from": "human", "value": "<video>\n" + q["question"]},
                {"from": "gpt", "value": q["answer"]},
            ],
        }
        for j, q in enumerate(questions)
    ]


def _test_items(k: int, questions: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """MSVD-QA style (question, answer) lists for one test clip, aligned by index and question_id."""
    name = _clip_name(k)
    qs = [
        {"video_name": name, "question": q["question"], "question_id": f"{name}_{j}", "family": q["family"]}
        for j, q in enumerate(questions)
    ]
    answers = [
        {"answer": q["answer"], "question_id": f"{name}_{j}", "family": q["family"]} for j, q in enumerate(questions)
    ]
    return qs, answers


def _run_jobs(jobs: list[tuple], workers: int, progress: bool) -> list[tuple[list[dict[str, str]], bool]]:
    """Runs _make_clip over jobs in order, in a spawn pool when workers > 1 (safe even if torch is loaded)."""
    bar = tqdm(total=len(jobs), disable=not progress, desc="synth", unit="clip")
    results = []
    if workers == 1:
        for job in jobs:
            results.append(_make_clip(job))
            bar.update()
    else:
        chunksize = max(1, min(32, len(jobs) // (workers * 8)))
        # concurrent.futures, not multiprocessing.Pool: a worker that dies (e.g. while re-importing an unguarded main
        # script) breaks the executor with an error, where a Pool starts a new worker forever and the call hangs.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                for result in pool.map(_make_clip, jobs, chunksize=chunksize):
                    results.append(result)
                    bar.update()
            except BrokenProcessPool as err:
                raise RuntimeError(f"a synth worker process died ({err}). If generate(..., workers > 1) is called at "
                                   'the top level of a script, put the call under `if __name__ == "__main__":` (the '
                                   "workers are spawned and re-import the main script)") from None
    bar.close()
    return results


def _prepare_out(out: Path, params: dict[str, Any]) -> bool:
    """Creates the output folders; returns whether existing videos may be reused (same clip parameters)."""
    (out / _VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    params_path = out / _VIDEO_DIR / _PARAMS_FILE
    reuse = params_path.is_file() and json.loads(params_path.read_text(encoding="utf-8")) == params
    _write_json(params_path, params)
    return reuse


def _meta(
    results: list[tuple[list[dict[str, str]], bool]],
    split_names: list[str],
    params: dict[str, Any],
    n: int,
    splits: tuple[float, float, float],
) -> dict[str, Any]:
    """meta.json content: parameters and counts only (nothing run-dependent, so it is byte-identical too)."""
    clips, questions = Counter(split_names), Counter()
    families: dict[str, Counter] = {s: Counter() for s in ("train", "val", "test")}
    answers: dict[str, Counter] = {f: Counter() for f in FAMILIES if f != "caption"}
    for (qs, _), split in zip(results, split_names):
        questions[split] += len(qs)
        for q in qs:
            families[split][q["family"]] += 1
            if q["family"] in answers:
                answers[q["family"]][q["answer"]] += 1
    return {
        "generator": "videopanda.data.synth",
        **params,
        "n": n,
        "splits": list(splits),
        "families_order": list(FAMILIES),
        "clips": {s: clips[s] for s in families},
        "questions": {s: questions[s] for s in families},
        "families": {s: {f: families[s][f] for f in FAMILIES} for s in families},
        "answers": {f: dict(sorted(c.items())) for f, c in answers.items()},
    }


def generate(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    num_frames: int = 16,
    size: int = 128,
    fps: int = 8,
    workers: int = 1,
    splits: tuple[float, float, float] = (0.9, 0.05, 0.05),
    progress: bool = True,
) -> dict[str, Any]:
    """Writes a synthetic video-QA dataset: videos/, train.json, val.json, test_q.json, test_a.json, meta.json.

    Re-running with the same seed and clip parameters reuses the videos already written (resume); the JSON is
    always rewritten, byte-identically, from the deterministic scenes.

    With workers > 1 the clips are made in a "spawn" pool (safe when torch is already loaded), so a script that
    calls this at import time needs the usual ``if __name__ == "__main__":`` guard.

    Args:
        out_dir: Output folder, created if needed.
        n: Number of clips (each yields 4 to 7 single-turn questions).
        seed: Fixes the scenes, questions and split assignment.
        num_frames: Frames per clip, >= 2.
        size: Frame height and width, a multiple of 16 and >= 32.
        fps: Frame rate of the written videos.
        workers: Processes rendering and encoding clips; the output does not depend on it.
        splits: Fractions of clips for (train, val, test).
        progress: Shows a tqdm bar.

    Returns:
        Summary: out_dir, n, seed, clips and questions per split, questions per family, rendered and reused
        video counts, and the elapsed seconds.
    """
    _check_clip_args(num_frames=num_frames, size=size, fps=fps)
    _check_args(n, seed, workers, splits)
    started, out = time.perf_counter(), Path(out_dir)
    clip_args = {"num_frames": num_frames, "size": size, "fps": fps}
    params = {"version": SYNTH_VERSION, "seed": seed, **clip_args, "codec": _pick_codec()}
    reuse = _prepare_out(out, params)
    jobs = [(k, seed, clip_args, str(out), reuse) for k in range(n)]
    results = _run_jobs(jobs, workers, progress)

    split_names = _split_of(n, seed, tuple(splits))
    items: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test_q": [], "test_a": []}
    for k, ((questions, _), split) in enumerate(zip(results, split_names)):
        if split == "test":
            test_q, test_a = _test_items(k, questions)
            items["test_q"] += test_q
            items["test_a"] += test_a
        else:
            items[split] += _train_items(k, questions)
    for name, content in items.items():
        _write_json(out / f"{name}.json", content)

    meta = _meta(results, split_names, params, n, tuple(splits))
    _write_json(out / "meta.json", meta)
    rendered = sum(r for _, r in results)
    return {
        "out_dir": str(out),
        "n": n,
        "seed": seed,
        "clips": meta["clips"],
        "questions": meta["questions"],
        "families": meta["families"],
        "rendered": rendered,
        "reused": n - rendered,
        "seconds": round(time.perf_counter() - started, 2),
    }
