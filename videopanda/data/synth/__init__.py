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

Modules, in the order of the data flow: `scene` (the vocabulary and the Scene), `sampling`, `render`, `questions`,
`writing` (mp4 and JSON files) and `generation` (`generate`).
"""

from __future__ import annotations

from .generation import generate
from .questions import caption, make_questions
from .render import render_scene
from .sampling import sample_scene
from .scene import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    FAMILIES,
    SHAPES,
    SYNTH_VERSION,
    WIDE_BACKGROUNDS,
    Scene,
    SceneObject,
)
from .writing import write_video

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
