"""Training data in the LLaVA / Video-LLaVA conversation format, loaded lazily.

An item: {"id": ..., "video": "rel/path.mp4" (or "image": ...), "conversations": [{"from": "human", "value":
"<video>\\nQuestion?"}, {"from": "gpt", "value": "Answer."}, ...]}. Items with neither video nor image are text-only.
Broken or missing media, malformed entries (a turn without a string `value`, turns that are not objects, a `video`
that is not a path, ...) and over-long samples are skipped and counted (never replaced by a random other sample);
`SkipCounter` reports them, and the recipe fails if more than `max_skip_fraction` of a pass is skipped. A file that is
not a JSON list, or in which no entry is well formed, is refused at load with one error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..processing import VideoPandaProcessor
from ..video import VideoDecodeError, load_image, load_video

PLACEHOLDER = re.compile(r"\s*<(video|image)>\s*")


@dataclass
class Sample:
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    teacher_pixel_values: torch.Tensor | None = None
    """Distillation only: the same frames laid out for the teacher ([T, 4, R, R]); None otherwise."""


@dataclass
class Skipped:
    """A sample that could not be used, and why."""

    index: int
    reason: str


def read_items(path: str | Path) -> list[Any]:
    """The JSON list of a training file, entries unchecked (see `entry_problem`); anything but a list is an error."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON (JSONDecodeError) or bad UTF-8 (UnicodeDecodeError)
        raise ValueError(f"{path}: cannot read training JSON ({err})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA-format entries ({{\"id\", \"video\", "
                         f"\"conversations\": [...]}}), got a JSON {_json_kind(items)}")
    return items


def _json_kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def entry_problem(item: Any) -> str | None:
    """Why a training entry cannot be used, from its JSON shape alone (no media is opened), or None if it can.

    The reason has no colon: `SkipCounter` groups skips by the text after the last colon.
    """
    if not isinstance(item, dict):
        return f"malformed entry, a JSON {_json_kind(item)} instead of an object"
    for key in ("video", "image"):
        if key in item and not isinstance(item[key], str):
            return f"malformed entry, '{key}' is a JSON {_json_kind(item[key])} instead of a path"
        if key in item and not item[key].strip():
            return f"malformed entry, '{key}' is an empty path"
    conv = item.get("conversations")
    if not isinstance(conv, list):
        return "malformed entry, no 'conversations' list" if conv is None else \
            f"malformed entry, 'conversations' is a JSON {_json_kind(conv)} instead of a list"
    if len(conv) < 2 or len(conv) % 2:
        return "conversations must alternate human/gpt turns"
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict):
            return f"malformed entry, a turn is a JSON {_json_kind(turn)} instead of an object"
        if turn.get("from") != ("human", "gpt")[k % 2]:
            return "expected human then gpt turns"
        if "value" not in turn:
            return "malformed entry, a turn has no 'value'"
        if not isinstance(turn["value"], str):
            return f"malformed entry, a turn's 'value' is a JSON {_json_kind(turn['value'])} instead of a string"
    return None


def _entry_name(item: Any, index: int | None) -> str:
    ident = item.get("id") if isinstance(item, dict) else None
    where = "item" if index is None else f"item {index}"
    return where if ident is None else f"{where} (id {str(ident)[:60]})"


def conversation_turns(item: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) pairs with the placeholder removed (the processor puts it back in turn one).

    Raises ValueError, naming the item, if the entry is malformed (`entry_problem`)."""
    problem = entry_problem(item)
    if problem is not None:
        raise ValueError(f"{_entry_name(item, None)}: {problem}")
    conv = item["conversations"]
    return [(PLACEHOLDER.sub(" ", human["value"]).strip(), gpt["value"].strip())
            for human, gpt in zip(conv[0::2], conv[1::2])]


class ConversationDataset(torch.utils.data.Dataset):
    """Lazy video-QA conversations.

    Args:
        json_path: the LLaVA-format list. Malformed entries are found at load (`malformed`: index -> reason) and
            come back as `Skipped`; a file with no well-formed entry is refused (ValueError).
        processor: tokenizer + frame preprocessing of the model being trained.
        media_root: folder the item paths are relative to (default: the JSON's folder).
        max_length: samples longer than this after visual expansion are skipped (the reference truncated before
            expansion and could exceed the context; spec 8.15).
        flip: random horizontal flip of the frames (augmentation; the reference flips even at inference). It draws
            from the torch RNG of the loading process, so it is not reproducible across DataLoader worker counts or
            resumes; `videopanda train --flip` uses `recipe.PositionFlip` (keyed by sample position) instead.
        teacher_inputs: distillation only (default off): frames -> teacher pixel values (`teachers.TeacherInputs`),
            filling `Sample.teacher_pixel_values` from the same decoded frames (flipped together with the student's).
    """

    def __init__(self, json_path: str | Path, processor: VideoPandaProcessor, *, media_root: str | Path | None = None,
                 max_length: int | None = None, flip: bool = False,
                 teacher_inputs: Callable[..., torch.Tensor] | None = None) -> None:
        items = read_items(json_path)
        # Malformed entries are checked once here and skipped (and counted) when their turn comes; `items` holds an
        # empty conversation in their place, so that code reading it (length estimates) needs no checks of its own.
        self.malformed: dict[int, str] = {}
        for index, item in enumerate(items):
            problem = entry_problem(item)
            if problem is not None:
                self.malformed[index] = f"{_entry_name(item, index)}: {problem}"
                items[index] = {"conversations": []}
        if items and len(self.malformed) == len(items):
            raise ValueError(f"{json_path}: none of the {len(items)} entries is a LLaVA-format training item (the "
                             f"first one: {self.malformed[0]})")
        self.items: list[dict[str, Any]] = items
        self.processor = processor
        self.root = Path(media_root) if media_root else Path(json_path).parent
        self.max_length = max_length
        self.flip = flip
        self.teacher_inputs = teacher_inputs

    def __len__(self) -> int:
        return len(self.items)

    def length_hint(self, index: int) -> int:
        """Word count of the conversation, for length-grouped batching without decoding videos."""
        return sum(len(turn["value"].split()) for turn in self.items[index]["conversations"])

    def __getitem__(self, index: int) -> Sample | Skipped:
        if index in self.malformed:
            return Skipped(index, self.malformed[index])
        item = self.items[index]
        try:
            pixel_values, teacher = self._media(item)
            count = None if pixel_values is None else self.processor.count_tokens(pixel_values)
            ids, labels = self.processor.encode_conversation(conversation_turns(item), count)
        except (VideoDecodeError, ValueError) as err:
            return Skipped(index, str(err))
        if self.max_length is not None and len(ids) > self.max_length:
            return Skipped(index, f"{len(ids)} tokens > max_length {self.max_length}")
        return Sample(torch.tensor(ids), torch.tensor(labels), pixel_values, teacher)

    def _media(self, item: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(student pixel values, teacher pixel values or None), or (None, None) for a text-only item."""
        if "video" in item:
            frames = load_video(self.root / item["video"], self.processor.config.num_frames)
        elif "image" in item:
            frames = load_image(self.root / item["image"])
        else:
            return None, None
        pixel_values = self.processor.preprocess(frames, image="video" not in item)
        teacher = self.teacher_inputs(frames, image="video" not in item) if self.teacher_inputs else None
        if self.flip and torch.rand(()) < 0.5:
            pixel_values = pixel_values.flip(-1)  # frames and mask together
            teacher = None if teacher is None else teacher.flip(-1)  # the same flip (the reference drew its own)
        return pixel_values, teacher


@dataclass
class SkipCounter:
    """Skipped samples of a run, by reason; the recipe logs it and stops past a threshold."""

    seen: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, batch_seen: int, reasons: list[str]) -> None:
        self.seen += batch_seen
        for reason in reasons:
            key = reason.split(":")[-1].strip()[:80]
            self.skipped[key] = self.skipped.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.skipped.values())


def collate(batch: list[Sample | Skipped], pad_id: int) -> dict[str, Any]:
    """Right-padded batch; skipped samples are dropped and their reasons passed on for counting."""
    samples = [s for s in batch if isinstance(s, Sample)]
    reasons = [s.reason for s in batch if isinstance(s, Skipped)]
    out: dict[str, Any] = {"skipped": reasons, "seen": len(batch)}
    if not samples:
        return out
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = s.input_ids, s.labels, 1
    out.update(input_ids=ids, labels=labels, attention_mask=mask)
    pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
    if pixels:
        same = len({p.shape for p in pixels}) == 1
        out["pixel_values"] = torch.stack(pixels) if same else pixels
    teacher = [s.teacher_pixel_values for s in samples if s.pixel_values is not None]
    if pixels and any(t is not None for t in teacher):  # distillation: aligned with pixel_values, video by video
        if any(t is None for t in teacher):
            raise ValueError("some samples of the batch have teacher pixel values and some do not")
        out["teacher_pixel_values"] = torch.stack(teacher) if len({t.shape for t in teacher}) == 1 else teacher
    return out
