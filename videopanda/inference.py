"""One place that turns (model name, video, question) into an answer; the CLI, server and evaluation call it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .modeling.videopanda import VideoPandaForCausalLM
from .processing import VideoPandaProcessor
from .weights import DEFAULT_MODEL, CheckpointError, load_default_model


class ContextLengthError(ValueError):
    """The prompt plus the answer would not fit the LLM's context window."""


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    visual_tokens: int
    new_tokens: int
    seconds: float


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"--dtype must be one of auto, {', '.join(names)}; got {dtype!r}")
    return names[dtype]


def load(model: str | Path = DEFAULT_MODEL, *, device: str = "auto",
         dtype: str = "auto") -> tuple[VideoPandaForCausalLM, VideoPandaProcessor]:
    """Model (eval mode, on `device`) and its processor. The model gets `visual_weights_trained` (bool)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if str(model) == DEFAULT_MODEL:
        net, trained = load_default_model(dt)
    else:
        path = Path(model)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{model}: not a model folder (no config.json); pass a checkpoint folder or "
                                  f"'{DEFAULT_MODEL}'")
        net, trained = VideoPandaForCausalLM.from_pretrained(path, dtype=dt), True
    net.visual_weights_trained = trained
    return net.to(dev).eval(), VideoPandaProcessor.from_pretrained(model)


@torch.inference_mode()
def answer(model: VideoPandaForCausalLM, processor: VideoPandaProcessor, frames: Any, question: str,
           history: Sequence[tuple[str, str]] = (), *, image: bool = False, max_new_tokens: int = 128,
           temperature: float = 0.0, streamer: Any = None) -> Answer:
    """Answer `question` about `frames` (a video, or an image with image=True) after earlier (question, answer)
    turns. Greedy unless temperature > 0."""
    start = time.perf_counter()
    prompt = processor.build_prompt(question, history)
    inputs = processor(images=[frames], text=prompt) if image else processor(videos=[frames], text=prompt)
    n_prompt = inputs["input_ids"].shape[1]
    limit = getattr(model.config.text_config, "max_position_embeddings", None)
    if limit is not None and n_prompt + max_new_tokens > limit:
        raise ContextLengthError(f"the prompt takes {n_prompt} tokens (video included) and the answer up to "
                                 f"{max_new_tokens}, more than the model's context of {limit} tokens; shorten the "
                                 "question or the history, or use fewer frames or --max-new-tokens")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **sampling)
    new = out[0, n_prompt:]
    visual = int((inputs["input_ids"] == model.config.video_token_index).sum())
    return Answer(processor.decode(new), n_prompt, visual, int(new.numel()), time.perf_counter() - start)
