"""Questions with one canonical short answer each, read off the scene's known parameters: seven families, each
asked only when its answer is unambiguous (see the package docstring)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from .sampling import _pick
from .scene import COLOURS, FAMILIES, SHAPES, Scene, SceneObject

__all__ = ["caption", "make_questions"]

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")

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
