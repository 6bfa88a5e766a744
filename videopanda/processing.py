"""Frames + text -> model inputs: pixel_values, and input_ids with each `<video>` expanded to its visual tokens.

Prompt formats:
  * "videopanda_v1": the reference's evaluation template (spec 4.4), used for the official checkpoints:
    `{system} USER: <video>\n{question} ASSISTANT:`; later turns `... ASSISTANT: {answer}</s>USER: {q} ASSISTANT:`.
  * "chat_template": the LLM tokenizer's own chat template, with `<video>\n` before the first question.
Text is split on the placeholders and each piece tokenised on its own (as the reference's `tokenizer_image_token`),
so the placeholder never merges with its neighbours, whatever the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from .configuration import VideoPandaConfig
from .modeling.stab import count_visual_tokens
from .transforms import CLIP_MEAN, CLIP_STD, frames_to_pixel_values

VIDEO_TOKEN = "<video>"
PLACEHOLDER = re.compile(r"<video>|<image>")
VIDEOPANDA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                        "The assistant gives helpful, detailed, and polite answers to the human's questions.")

Frames = np.ndarray | torch.Tensor  # [T, H, W, 3] uint8 frames, or [T, 4, S, S] pixel values already processed


class VideoPandaProcessor:
    """Tokenizer + "anypixel" preprocessing with the numbers of one `VideoPandaConfig`.

    Args:
        tokenizer: the LLM's tokenizer.
        config: the model config (frames, sizes, placeholder id, prompt format).
        system_prompt: overrides the system prompt of the prompt format.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: VideoPandaConfig,
                 system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.system_prompt = system_prompt
        if tokenizer.pad_token_id is None:  # the reference pads Vicuna with unk (id 0)
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> VideoPandaProcessor:
        """"videopanda-default", one of our checkpoint folders, or an official Video-Panda folder."""
        from .configuration import VARIANTS
        from .weights import DEFAULT_MODEL, is_official_checkpoint, read_config_dict, smollm2_dir

        if str(name_or_path) == DEFAULT_MODEL:
            from .weights import default_video_token_id

            tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
            config = VideoPandaConfig(text_config={"model_type": "llama"}, video_token_index=default_video_token_id(),
                                      **VARIANTS[DEFAULT_MODEL])
        elif is_official_checkpoint(name_or_path):
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            config = VideoPandaConfig.from_official(read_config_dict(name_or_path), name_or_path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            config = VideoPandaConfig.from_pretrained(name_or_path)
        return cls(tokenizer, config, **kwargs)

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(folder)

    # -- pixels -------------------------------------------------------------------------------------------------------
    def preprocess(self, frames: Frames, *, image: bool = False) -> torch.Tensor:
        """[T, H, W, 3] uint8 -> [T', 4, S, S]. Videos (a 1-frame video too) are padded with empty frames to
        `num_frames`, as the reference does; an image stays a single frame (the T=1 image path)."""
        if isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 4:
            return frames  # already pixel values
        frames = np.asarray(frames)
        c = self.config
        num = None if image else c.num_frames
        return frames_to_pixel_values(frames, num_frames=num, image_size=c.image_size,
                                      teacher_size=c.teacher_image_size, patch_size=c.patch_size,
                                      mean=CLIP_MEAN, std=CLIP_STD)

    def count_tokens(self, pixel_values: torch.Tensor) -> int:
        """Visual tokens of one video [T, 4, S, S], exactly as the STAB will produce them."""
        c = self.config
        return count_visual_tokens(pixel_values[None], c.patch_size, c.conv_stride, c.empty_frame_patches)[0]

    # -- text ---------------------------------------------------------------------------------------------------------
    def build_prompt(self, question: str, history: Sequence[tuple[str, str]] = (), *, with_video: bool = True) -> str:
        """The generation prompt for `question` after earlier (question, answer) turns; `<video>` goes in turn one."""
        return self.render([*history, (question, None)], with_video=with_video)

    def render(self, turns: Sequence[tuple[str, str | None]], *, with_video: bool = True) -> str:
        """Conversation text; a last turn with answer None ends with the generation prompt."""
        first = f"{VIDEO_TOKEN}\n" if with_video else ""
        if self.config.prompt_format == "videopanda_v1":
            eos = self.tokenizer.eos_token or "</s>"
            text = (self.system_prompt or VIDEOPANDA_V1_SYSTEM) + " "
            for i, (q, a) in enumerate(turns):
                text += f"USER: {first if i == 0 else ''}{q} ASSISTANT:"
                text += f" {a}{eos}" if a is not None else ""
            return text
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for i, (q, a) in enumerate(turns):
            messages.append({"role": "user", "content": (first if i == 0 else "") + q})
            if a is not None:
                messages.append({"role": "assistant", "content": a})
        open_turn = turns[-1][1] is None if turns else False
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=open_turn, tokenize=False)

    def encode_conversation(self, turns: Sequence[tuple[str, str]], visual_count: int | None,
                            ) -> tuple[list[int], list[int]]:
        """Training ids and labels of a conversation: only the answers (and their end-of-turn text) are learned.

        Each answer's text is the difference between the conversation rendered with and without that answer, so
        any prefix-consistent chat template works. `visual_count` None means a text-only sample.
        """
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for k, (question, answer) in enumerate(turns):
            prompt = self.render([*turns[:k], (question, None)], with_video=visual_count is not None)
            full = self.render(turns[: k + 1], with_video=visual_count is not None)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ValueError("the chat template is not prefix-consistent; cannot mask the answers")
            piece = prompt[len(done):]
            counts = [visual_count] if k == 0 and visual_count is not None else []
            prompt_ids = self.tokenize(piece, counts) if k == 0 else self._plain(piece)
            answer_ids = self._plain(full[len(prompt):])
            ids += prompt_ids + answer_ids
            labels += [-100] * len(prompt_ids) + answer_ids
            done = full
        return ids, labels

    def _plain(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def tokenize(self, text: str, visual_counts: Sequence[int]) -> list[int]:
        """Token ids of a prompt whose k-th placeholder becomes `visual_counts[k]` placeholder ids."""
        pieces = PLACEHOLDER.split(text)
        if len(pieces) - 1 != len(visual_counts):
            raise ValueError(f"the text has {len(pieces) - 1} <video>/<image> placeholders but "
                             f"{len(visual_counts)} videos/images were given")
        bos = self.config.prompt_format == "videopanda_v1"
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i:
                ids += [self.config.video_token_index] * visual_counts[i - 1]
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=bos and i == 0)["input_ids"]
            elif i == 0 and bos and self.tokenizer.bos_token_id is not None:
                ids.append(self.tokenizer.bos_token_id)
        return ids

    def __call__(self, videos: Frames | Sequence[Frames] | None = None, text: str | Sequence[str] | None = None,
                 *, images: Frames | Sequence[Frames] | None = None, padding_side: str = "left") -> BatchFeature:
        """Model inputs for a batch.

        Args:
            videos: one video ([T, H, W, 3] uint8) or a list, in the order their placeholders appear in `text`.
            text: prompts with `<video>` placeholders, or plain questions (then wrapped by `build_prompt`).
            images: single frames ([H, W, 3] or [1, H, W, 3]), treated as 1-frame videos (the T=1 image path).
            padding_side: "left" for generation, "right" for training.

        Returns:
            BatchFeature with input_ids [B, N], attention_mask [B, N] and pixel_values [V, T, 4, S, S] (a list of
            [T_v, 4, S, S] when frame counts differ, e.g. images mixed with videos).
        """
        stills = [np.asarray(i)[None] if np.asarray(i).ndim == 3 else i for i in _as_list(images)]
        pixel = [self.preprocess(v) for v in _as_list(videos)] + [self.preprocess(i, image=True) for i in stills]
        counts = [self.count_tokens(p) for p in pixel]
        texts = [text] if isinstance(text, str) else list(text or [""])
        if not any(PLACEHOLDER.search(t) for t in texts) and pixel:
            if len(texts) != len(pixel):
                raise ValueError(f"{len(texts)} questions for {len(pixel)} videos: pass one question per video")
            texts = [self.build_prompt(t) for t in texts]
        ids, start = [], 0
        for t in texts:
            n = len(PLACEHOLDER.findall(t))
            ids.append(self.tokenize(t, counts[start:start + n]))
            start += n
        if start != len(pixel):
            raise ValueError(f"the texts hold {start} placeholders but {len(pixel)} videos/images were given")
        data: dict[str, Any] = _pad(ids, self.tokenizer.pad_token_id, padding_side)
        if pixel:
            same = len({p.shape for p in pixel}) == 1
            data["pixel_values"] = torch.stack(pixel) if same else pixel
        return BatchFeature(data)

    def decode(self, ids: torch.Tensor | Sequence[int], **kwargs: Any) -> str:
        ids = [i for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids) if i >= 0
               and i != self.config.video_token_index]
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(ids, **kwargs).strip()

    def batch_decode(self, sequences: torch.Tensor | Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return [x]
    return list(x)


def _pad(ids: list[list[int]], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        sl = slice(width - len(x), width) if side == "left" else slice(0, len(x))
        input_ids[row, sl] = torch.tensor(x, dtype=torch.long)
        mask[row, sl] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
