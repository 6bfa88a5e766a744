"""The vocabulary of synthetic clips (shapes, colours, directions, backgrounds, outlines) and the `Scene` that
describes one clip exactly: rendering it and answering questions about it need nothing else."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["BACKGROUNDS", "COLOURS", "DIRECTIONS", "FAMILIES", "SHAPES", "SYNTH_VERSION", "WIDE_BACKGROUNDS", "Scene",
           "SceneObject"]

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

OUTLINES: dict[str, tuple[int, int, int] | None] = {"dark": (20, 20, 20), "light": (200, 200, 200), "none": None}
_OUTLINE_PX = 1.5
# Drawn extent relative to SceneObject.size, chosen so the four shapes cover similar areas.
_SHAPE_SCALE = {"circle": 1.0, "square": 0.9, "triangle": 1.25, "star": 1.3}

_BG_RANGE = (35, 115)  # background channel values: muted and mid-dark, far from the saturated object colours
_WIDE_BG_RANGE = (20, 160)  # wide scenes: darker and brighter greys too, still far from the object colours


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
