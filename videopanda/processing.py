"""Frames + text -> model inputs: pixel_values, and input_ids with each `<video>` expanded to its visual tokens.

`VideoPandaProcessor` is a transformers `ProcessorMixin`: the LLM's tokenizer, a `VideoPandaVideoProcessor` (the
preprocessing numbers and the "anypixel" transform) and a chat template. `save_pretrained` writes
`processor_config.json` (the video processor's numbers, the prompt format, the placeholder id), the tokenizer's files
and `chat_template.jinja`; after `import videopanda`, `AutoProcessor.from_pretrained` rebuilds the same processor.

Prompt formats, both Jinja chat templates (`processor.chat_template`, used by `apply_chat_template` and `render`):
  * "videopanda_v1": the reference's evaluation template (spec 4.4), used for the official checkpoints:
    `{system} USER: <video>\n{question} ASSISTANT:`; later turns `... ASSISTANT: {answer}</s>USER: {q} ASSISTANT:`.
  * "chat_template": the LLM tokenizer's own chat template, with `<video>\n` before the first question.
Both read content blocks (`{"type": "video", "path": "clip.mp4"}`, `{"type": "text", "text": ...}`) as transformers'
video-LLM processors do, through `chat_templates/content_blocks.jinja` put in front of them.
Text is split on the placeholders and each piece tokenised on its own (as the reference's `tokenizer_image_token`),
so the placeholder never merges with its neighbours, whatever the tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils import PROCESSOR_NAME

from .configuration import VideoPandaConfig
from .video_processing import Video, VideoPandaVideoProcessor, VideoPandaVideosKwargs, check_return_tensors

VIDEO_TOKEN = "<video>"
PLACEHOLDER = re.compile(r"<video>|<image>")
PROMPT_FORMATS = ("chat_template", "videopanda_v1")
VIDEOPANDA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                        "The assistant gives helpful, detailed, and polite answers to the human's questions.")
TEMPLATES = Path(__file__).parent / "chat_templates"

Frames = Video  # [T, H, W, 3] uint8 frames, [T, 4, S, S] pixel values already processed, or a local file
# Loading options that name where files come from; `resolve_model` and transformers take care of them.
_HUB_ONLY = ("trust_remote_code", "_from_auto", "_from_pipeline", "force_download", "proxies", "code_revision")
# `__call__` options that `apply_chat_template` forwards when passed as plain keyword arguments.
_CALL_OPTIONS = ("num_frames", "padding_side", "add_special_tokens")


def chat_template_for(prompt_format: str, llm_template: str | dict[str, str] | None,
                      system_prompt: str | None = None) -> str | None:
    """The processor's Jinja template: the content-block reader, then "videopanda_v1" or the LLM's own template.

    `system_prompt` becomes the system message of conversations that have none (the reference's for
    "videopanda_v1"). None when the format is "chat_template" and the tokenizer has no template.
    """
    reader = (TEMPLATES / "content_blocks.jinja").read_text().rstrip("\n")
    if prompt_format == "videopanda_v1":
        body, system = (TEMPLATES / "videopanda_v1.jinja").read_text(), system_prompt or VIDEOPANDA_V1_SYSTEM
    else:
        body, system = llm_template, system_prompt
        if isinstance(body, dict):
            body = body.get("default")
        if body is None:
            return None
        body = body.split(reader, 1)[-1]  # a tokenizer saved beside a processor holds the processor's template
    head = "{%- set default_system = " + json.dumps(system) + " -%}\n" if system else ""
    return head + reader + body


class VideoPandaProcessor(ProcessorMixin):
    """Tokenizer + "anypixel" video preprocessing + chat template of one Video-Panda model.

    Args:
        tokenizer: the LLM's tokenizer.
        video_processor: the preprocessing numbers; a `VideoPandaConfig` also gives `prompt_format` and
            `video_token_index` unless they are passed.
        chat_template: Jinja template; None builds the one of `prompt_format` (see `chat_template_for`).
        prompt_format: "videopanda_v1" or "chat_template" (module docstring).
        video_token_index: id repeated once per visual token; need not be in the tokenizer's vocabulary.
        system_prompt: overrides the system prompt of the prompt format.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, video_processor: VideoPandaVideoProcessor | VideoPandaConfig,
                 chat_template: str | None = None, prompt_format: str | None = None,
                 video_token_index: int | None = None, system_prompt: str | None = None) -> None:
        if isinstance(video_processor, VideoPandaConfig):
            config, video_processor = video_processor, VideoPandaVideoProcessor.from_config(video_processor)
            prompt_format = prompt_format or config.prompt_format
            video_token_index = config.video_token_index if video_token_index is None else video_token_index
        self.prompt_format = prompt_format or "chat_template"
        self.video_token_index = -200 if video_token_index is None else video_token_index
        self.system_prompt = system_prompt
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if tokenizer.pad_token_id is None:  # the reference pads Vicuna with unk (id 0)
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        if chat_template is None:
            chat_template = chat_template_for(self.prompt_format, tokenizer.chat_template, system_prompt)
        super().__init__(tokenizer, video_processor, chat_template=chat_template)

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        """transformers finds the video processor's base class among its top-level names, which lack it when
        torchvision is not installed (as here); ours is checked directly."""
        if argument_name == "video_processor":
            if not isinstance(argument, VideoPandaVideoProcessor):
                raise TypeError(f"video_processor must be a VideoPandaVideoProcessor, got {type(argument).__name__}")
            return VideoPandaVideoProcessor
        return super().check_argument_for_proper_class(argument_name, argument)

    @property
    def config(self) -> VideoPandaVideoProcessor:
        """The video processor, i.e. the preprocessing numbers (num_frames, image_size, ...):
        `processor.config.num_frames = 16` samples and pads to 16 frames from then on."""
        return self.video_processor

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, config: VideoPandaConfig,
                    **kwargs: Any) -> VideoPandaProcessor:
        """A processor for `config`; kwargs are constructor arguments or video processor numbers to override."""
        video_fields = {k: kwargs.pop(k) for k in VideoPandaVideosKwargs.__annotations__ if k in kwargs}
        return cls(tokenizer, VideoPandaVideoProcessor.from_config(config, **video_fields), **{
            "prompt_format": config.prompt_format, "video_token_index": config.video_token_index, **kwargs})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, cache_dir: str | Path | None = None,
                        force_download: bool = False, local_files_only: bool = False, token: str | bool | None = None,
                        revision: str | None = None, **kwargs: Any) -> VideoPandaProcessor:
        """"videopanda-default", one of our folders, an official Video-Panda folder, or a hub id of either.

        A folder with `processor_config.json` loads as transformers saved it; otherwise the name goes through
        `weights.resolve_model` and the numbers come from the model config (official folders: their EVE-style
        config.json, read by `VideoPandaConfig.from_official`). kwargs: `subfolder`, constructor arguments
        (`system_prompt`, ...) and video processor numbers to override (`num_frames`, ...).
        """
        from .configuration import variant_config
        from .weights import DEFAULT_MODEL, default_video_token_id, read_config_dict, resolve_model, smollm2_dir

        subfolder = kwargs.pop("subfolder", None) or None
        for name in _HUB_ONLY:
            kwargs.pop(name, None)
        name = str(pretrained_model_name_or_path)
        local = Path(name).expanduser() / (subfolder or "")
        if name != DEFAULT_MODEL and (local / PROCESSOR_NAME).is_file():
            return super().from_pretrained(str(local), **kwargs)
        source = resolve_model(name, subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token,
                               local_files_only=local_files_only)
        if source.kind == "default":
            tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
            config = variant_config(DEFAULT_MODEL, video_token_index=default_video_token_id())
        elif (source.folder / PROCESSOR_NAME).is_file():  # a hub copy of a folder we saved
            return super().from_pretrained(str(source.folder), **kwargs)
        elif source.kind == "official":
            tokenizer = AutoTokenizer.from_pretrained(source.folder)
            config = VideoPandaConfig.from_official(read_config_dict(source.folder), source.folder)
        else:  # our folders saved with the tokenizer only
            tokenizer = AutoTokenizer.from_pretrained(source.folder)
            config = VideoPandaConfig.from_pretrained(source.folder)
        return cls.from_config(tokenizer, config, **kwargs)

    # -- pixels -------------------------------------------------------------------------------------------------------
    def preprocess(self, frames: Frames, *, image: bool = False) -> torch.Tensor:
        """[T, H, W, 3] uint8 (or a file) -> [T', 4, S, S]; see `VideoPandaVideoProcessor.preprocess_video`."""
        return self.video_processor.preprocess_video(frames, image=image)

    def count_tokens(self, pixel_values: torch.Tensor) -> int:
        """Visual tokens of one video [T, 4, S, S], exactly as the STAB will produce them."""
        return self.video_processor.count_tokens(pixel_values)

    # -- text ---------------------------------------------------------------------------------------------------------
    def build_prompt(self, question: str, history: Sequence[tuple[str, str]] = (), *, with_video: bool = True) -> str:
        """The generation prompt for `question` after earlier (question, answer) turns; `<video>` goes in turn one."""
        return self.render([*history, (question, None)], with_video=with_video)

    def render(self, turns: Sequence[tuple[str, str | None]], *, with_video: bool = True) -> str:
        """Conversation text from the chat template; a last turn with answer None ends with the generation prompt."""
        if not turns:
            raise ValueError("render needs at least one (question, answer) turn")
        first = f"{VIDEO_TOKEN}\n" if with_video else ""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for i, (q, a) in enumerate(turns):
            messages.append({"role": "user", "content": (first if i == 0 else "") + q})
            if a is not None:
                messages.append({"role": "assistant", "content": a})
        return self.apply_chat_template(messages, add_generation_prompt=turns[-1][1] is None, tokenize=False)

    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any) -> Any:
        """transformers' `apply_chat_template`; video blocks (`{"type": "video", "path": ...}`) are decoded by
        `__call__` with our PyAV loader. Our call options (`num_frames=8`, ...) may be passed directly."""
        mine = {k: kwargs.pop(k) for k in _CALL_OPTIONS if k in kwargs}
        if mine:
            kwargs["processor_kwargs"] = {**(kwargs.get("processor_kwargs") or {}), **mine}
        return super().apply_chat_template(conversation, chat_template, **kwargs)

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

    def tokenize(self, text: str, visual_counts: Sequence[int], *, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of a prompt whose k-th placeholder becomes `visual_counts[k]` placeholder ids.

        `add_special_tokens` (BOS on the first piece) defaults to the prompt format's: on for "videopanda_v1", as the
        reference; off for "chat_template", whose template writes its own special tokens.
        """
        pieces = PLACEHOLDER.split(text)
        if len(pieces) - 1 != len(visual_counts):
            raise ValueError(f"the text has {len(pieces) - 1} <video>/<image> placeholders but "
                             f"{len(visual_counts)} videos/images were given")
        bos = self.prompt_format == "videopanda_v1" if add_special_tokens is None else add_special_tokens
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i:
                ids += [self.video_token_index] * visual_counts[i - 1]
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=bos and i == 0)["input_ids"]
            elif i == 0 and bos and self.tokenizer.bos_token_id is not None:
                ids.append(self.tokenizer.bos_token_id)
        return ids

    def __call__(self, videos: Frames | Sequence[Any] | None = None, text: str | Sequence[str] | None = None, *,
                 images: Frames | Sequence[Any] | None = None, audio: Any = None, padding_side: str = "left",
                 num_frames: int | None = None, add_special_tokens: bool | None = None,
                 return_tensors: str | None = None, do_sample_frames: bool | None = None) -> BatchFeature:
        """Model inputs for a batch.

        Args:
            videos: one video ([T, H, W, 3] uint8, or a local file decoded with `videopanda.video.load_video`) or a
                (nested) list, in the order their placeholders appear in `text`.
            text: prompts with `<video>` placeholders, or plain questions (then wrapped by `build_prompt`).
            images: single frames ([H, W, 3] or [1, H, W, 3], or image files), treated as 1-frame videos (the T=1
                image path); their placeholders come after those of the videos.
            padding_side: "left" for generation, "right" for training.
            num_frames: frames sampled from a file and padded to, for this call (default `config.num_frames`).
            add_special_tokens: see `tokenize`.
            audio, return_tensors, do_sample_frames: what transformers' `apply_chat_template` passes: no audio,
                torch tensors, and files are always sampled (arrays never are).

        Returns:
            BatchFeature with input_ids [B, N], attention_mask [B, N] and pixel_values [V, T, 4, S, S] (a list of
            [T_v, 4, S, S] when frame counts differ, e.g. images mixed with videos).
        """
        if audio is not None:
            raise ValueError("Video-Panda reads no audio")
        check_return_tensors(return_tensors)
        pixel = [self.video_processor.preprocess_video(v, num_frames=num_frames) for v in _flatten(videos)]
        pixel += [self.video_processor.preprocess_video(i, image=True) for i in _flatten(images)]
        counts = [self.count_tokens(p) for p in pixel]
        texts = [text] if isinstance(text, str) else list(text or [""])
        if not any(PLACEHOLDER.search(t) for t in texts) and pixel:
            if len(texts) != len(pixel):
                raise ValueError(f"{len(texts)} questions for {len(pixel)} videos: pass one question per video")
            texts = [self.build_prompt(t) for t in texts]
        ids, start = [], 0
        for t in texts:
            n = len(PLACEHOLDER.findall(t))
            ids.append(self.tokenize(t, counts[start:start + n], add_special_tokens=add_special_tokens))
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
               and i != self.video_token_index]
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(ids, **kwargs).strip()

    def batch_decode(self, sequences: torch.Tensor | Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]


def _flatten(x: Any) -> list:
    """Videos or images from one item, a list, or the per-conversation lists `apply_chat_template` passes."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [item for element in x for item in _flatten(element)]
    return [x]


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
