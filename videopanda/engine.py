"""`Engine`: one model, loaded and ready to answer fast. The CLI, the server, evaluation and the benchmarks use it.

The model stays the plain, trainable `VideoPandaForCausalLM`. The engine keeps beside it what makes answering fast:
  * the fused STAB (`fast.FastEncoder`, sharing the model's parameters): the engine encodes the video itself and
    hands the LLM `inputs_embeds`;
  * on CUDA, the LLM's q/k/v and gate/up projections fused (`fast.fuse_projections`, checked against
    transformers' forwards on a probe; plain again, with a warning, if they differ);
  * a static KV cache kept between calls ("static" and "compiled" decoding) and the lock of whoever uses it;
  * for "compiled": the decode step compiled (a CUDA graph on a GPU), the LLM's element-wise ops compiled
    (`fast.compile_pointwise`) and the visual encode replayed as a CUDA graph (`fast.GraphedEncoder`).
All of it belongs to one engine: two engines in a process share no cache and no compiled step.

Decoding modes (docs/speed.md has the measurements behind the defaults): "dynamic" (transformers' `generate` with
its growing KV cache), "static" (the kept static cache, eager), "compiled" (static cache + compiled decode step; the
first call pays the compilation) or "auto" (`runtime.DEFAULT_DECODING`). Single greedy requests in "static" and
"compiled" take a lean loop (`_greedy`); batches and sampling take transformers' `generate` with the same cache and
compilation settings. Greedy tokens are those of the plain model's `generate` whichever path runs (exactly in
float32; in bfloat16 on a GPU, different kernels can round a near-tie the other way: docs/speed.md). A fast part that
cannot run is left out with a warning, and the plain form runs instead.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fast import CompiledOps, FastEncoder, FastOptions, GraphedEncoder, compile_pointwise, fuse_projections
from .modeling.videopanda import VideoPandaForCausalLM
from .processing import VideoPandaProcessor
from .runtime import (
    DECODING_MODES,
    DEFAULT_DECODING,
    QuantizationError,
    check_quantization,
    quantization_config,
    resolve_decoding,
    resolve_device,
    resolve_dtype,
)
from .weights import DEFAULT_MODEL, ModelSource, load_default_model, resolve_model

__all__ = ["DECODING_MODES", "DEFAULT_DECODING", "Answer", "ContextLengthError", "Engine", "QuantizationError",
           "check_quantization", "quantization_config", "resolve_decoding", "resolve_device", "resolve_dtype"]

CACHE_BUCKET = 256  # static caches are sized up to a multiple of this, so prompts of similar length share one


class ContextLengthError(ValueError):
    """The prompt plus the answer would not fit the LLM's context window."""


@dataclass
class Answer:
    """One answer and its cost: the prompt's tokens (visual ones included), the answer's, and the seconds taken."""

    text: str
    prompt_tokens: int
    visual_tokens: int
    new_tokens: int
    seconds: float


class Engine:
    """A loaded model with its processor and fast paths; `answer` a question, or `generate` from prepared inputs.

    Args:
        model: the model, in eval mode on its device (`Engine.load` loads one).
        processor: its processor (`answer` needs it; None for an engine that generates from prepared inputs).
        source: where the model came from (`weights.resolve_model`), for reports.
        decoding: the default decoding mode of `answer` and `generate` (module docstring).
        fast: the form of each fast kernel (`fast.FastOptions`; "auto" everywhere by default).
        fuse_llm: fuse the LLM's projections (default: on CUDA, where a decode step is bound by reading weights).
            This changes the model's LLM in place (same weights, same state_dict).
    """

    def __init__(self, model: VideoPandaForCausalLM, processor: VideoPandaProcessor | None, *,
                 source: ModelSource | None = None, decoding: str = "auto", fast: FastOptions | None = None,
                 fuse_llm: bool | None = None) -> None:
        self.model, self.processor, self.source = model.eval(), processor, source
        self.device: torch.device = model.device
        resolve_decoding(decoding, self.device)  # a bad mode fails here, not at the first answer
        self.decoding = decoding
        self.fast = fast or FastOptions()
        self.visual_weights_trained = True
        report = getattr(model, "loading_report", None)
        self.loading_report: dict[str, Any] = report or (source.describe() if source is not None else {})
        self.encoder: FastEncoder | None = _fast_encoder(model, self.fast)
        if fuse_llm if fuse_llm is not None else self.device.type == "cuda":
            fuse_projections(model.language_model, self.fast)  # checked on a probe; stays plain with a warning
        self._lock = threading.Lock()  # held by the call using the kept static cache
        self._cache: tuple[int, int, Any] | None = None  # (batch size, length, StaticCache)
        self._step: Callable[..., torch.Tensor] | None = None
        self._pointwise: CompiledOps | None = None
        self._graphed: GraphedEncoder | None = None

    @classmethod
    def load(cls, model: str | Path = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
             quantization: str | None = None, subfolder: str | None = None, revision: str | None = None,
             source: ModelSource | None = None, decoding: str = "auto", fast: FastOptions | None = None,
             fuse_llm: bool | None = None) -> Engine:
        """Load a model (eval mode, on `device`) and its processor into an engine.

        Args:
            model: "videopanda-default", a checkpoint folder (ours or an official Video-Panda one) or a hub id.
            device, dtype: see `runtime.resolve_device` / `runtime.resolve_dtype`.
            quantization: None, "8bit" or "4bit": bitsandbytes quantization of the LLM's Linear layers while loading
                (checkpoint folders only; the default model's LLM has 135M parameters and needs none).
            subfolder, revision: for hub ids (`jh-yi/Video-Panda-7B` means its `videopanda_fitu` subfolder).
            source: `model` already resolved by `weights.resolve_model` (the CLI resolves before loading, to show
                download progress).
            decoding, fast, fuse_llm: as for `Engine(...)`.
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        if quantization is not None and str(model) == DEFAULT_MODEL:
            raise QuantizationError("--load-in is for checkpoint folders such as Video-Panda-7B; the default model's "
                                    "LLM is small (135M parameters): use --dtype bfloat16 to halve its memory instead")
        check_quantization(quantization, dev)
        source = source or resolve_model(model, subfolder=subfolder, revision=revision)
        trained = True
        if source.kind == "default":
            net, trained = load_default_model(VideoPandaForCausalLM, dt)
            net = net.to(dev)
        elif quantization is None:
            net = VideoPandaForCausalLM.from_pretrained(source, dtype=dt).to(dev)
        else:  # a quantized model is placed while loading; it cannot be moved afterwards
            net = VideoPandaForCausalLM.from_pretrained(source, dtype=dt, device_map={"": dev},
                                                        quantization_config=quantization_config(quantization, dt))
        processor = VideoPandaProcessor.from_pretrained(source.folder or DEFAULT_MODEL)
        engine = cls(net, processor, source=source, decoding=decoding, fast=fast, fuse_llm=fuse_llm)
        engine.visual_weights_trained = trained
        if source.kind == "default":
            engine.loading_report = {**source.describe(), "tensors": "bundled"}
        return engine

    # -- the visual side -----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor | list[torch.Tensor], crop_boxes: Any = None
               ) -> tuple[torch.Tensor, list[int]]:
        """Projected visual tokens, flat in LLM order: ([N_total, D], tokens per video), as
        `model.encode_video_flat` gives them, through the fused STAB. `crop_boxes`: read on the host beforehand
        (`crop_boxes_for`) for a device path free of host syncs."""
        if self.encoder is not None:
            try:
                return self.encoder(pixel_values, crop_boxes)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as err:  # a kernel that cannot run here (compiler, driver): the plain STAB instead
                warnings.warn(f"fused STAB disabled: {_first_line(err)}; encoding with the plain STAB", stacklevel=2)
                self.encoder = self._graphed = None
        return self.model.encode_video_flat(pixel_values)  # the plain STAB reads the crop boxes from the mask

    def crop_boxes_for(self, pixel_values: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
        """The frames' crop boxes of [B, T, 4, S, S] pixel values, read where they are (call it on the host copy);
        None where the plain STAB encodes (it reads the mask itself)."""
        if self.encoder is None or not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 5:
            return None
        return self.encoder.stab.crop_boxes_for(pixel_values)

    def _graphed_encode(self, pixel_values: torch.Tensor, crop_boxes: Any) -> torch.Tensor:
        """Visual tokens [N, D] from the engine's `GraphedEncoder`: on a GPU the compiled STAB + projector replayed
        as one CUDA graph per input shape and crop layout (7B, one video on an H100: 0.62 ms against 2-3.5 ms for the
        launch-bound eager encode; docs/speed.md), elsewhere the fused encode."""
        if self.encoder is None:
            return self.encode(pixel_values, crop_boxes)[0]
        if crop_boxes is None:
            crop_boxes = self.encoder.stab.crop_boxes_for(pixel_values)
        if self._graphed is None:
            self._graphed = GraphedEncoder(self.encoder.stab, self.encoder.projector, compile=pixel_values.is_cuda)
        try:
            return self._graphed(pixel_values.to(self.encoder.projector[0].weight.dtype), crop_boxes)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as err:
            warnings.warn(f"CUDA-graph visual encode disabled: {_first_line(err)}; encoding eagerly", stacklevel=2)
            self._graphed = None
            return self.encode(pixel_values, crop_boxes)[0]

    def _embed(self, input_ids: torch.Tensor, pixel_values: Any, crop_boxes: Any = None,
               graphed: bool = False) -> torch.Tensor:
        """Prompt embeddings [B, N, D] with the visual tokens in place of the placeholders."""
        if pixel_values is None:
            return self.model.embed_inputs(input_ids, None)
        if graphed and isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 5:
            visual = self._graphed_encode(pixel_values, crop_boxes)
        else:
            visual, _ = self.encode(pixel_values, crop_boxes)
        return self.model.embed_inputs(input_ids, None, visual=visual)

    def _to_device(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, Any, Any]:
        """(input_ids, attention_mask, pixel_values, crop boxes) on the model's device. A single video's boxes are
        read while its pixels are still on the host, so its encode (a CUDA-graph replay with "compiled") has no host
        sync."""
        ids, mask, pixels = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("pixel_values")
        if isinstance(pixels, torch.Tensor) and pixels.ndim == 4:  # [B, 4, S, S] images
            pixels = pixels[:, None]
        boxes = inputs.get("crop_boxes")
        if boxes is None and isinstance(pixels, torch.Tensor) and pixels.device.type == "cpu" and len(pixels) == 1:
            boxes = self.crop_boxes_for(pixels)  # a batch's are read on the device, overlapped with its patch embed
        dtype = self.model.video_projector[0].weight.dtype
        cuda = self.device.type == "cuda"
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.to(self.device, dtype, non_blocking=cuda)
        elif pixels is not None:
            pixels = [p.to(self.device, dtype, non_blocking=cuda) for p in pixels]
        return ids.to(self.device), None if mask is None else mask.to(self.device), pixels, boxes

    # -- generation ----------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, inputs: dict[str, Any], *, max_new_tokens: int, decoding: str | None = None,
                 temperature: float = 0.0, top_p: float | None = None, min_new_tokens: int = 0,
                 streamer: Any = None, pad_token_id: int | None = None, stopping_criteria: Any = None
                 ) -> torch.Tensor:
        """Token ids [B, N + new] for processor outputs (`input_ids`, optional `attention_mask` with left padding,
        `pixel_values` on any device), like `model.generate(**inputs, ...)`: greedy unless temperature > 0.

        A single greedy request in "static" or "compiled" mode takes the lean loop (`_greedy`); batches, sampling,
        "dynamic" and calls with `stopping_criteria` take transformers' `generate` (with the mode's cache and
        compilation), fed the prompt's embeddings.
        """
        mode = resolve_decoding(decoding or self.decoding, self.device)
        ids, mask, pixels, boxes = self._to_device(inputs)
        if mode == "compiled":
            self._compile_pointwise()
        single = ids.shape[0] == 1 and (mask is None or bool(mask.all()))
        if mode != "dynamic" and single and temperature <= 0 and stopping_criteria is None and \
                self._lock.acquire(blocking=False):
            try:
                return self._greedy(ids, pixels, boxes, max_new_tokens, compiled=mode == "compiled",
                                    min_new_tokens=min_new_tokens, streamer=streamer)
            finally:
                self._lock.release()
        embeds = self._embed(ids, pixels, boxes)
        options: dict[str, Any] = dict(do_sample=True, temperature=temperature) if temperature > 0 else \
            dict(do_sample=False)
        if temperature > 0 and top_p is not None:
            options["top_p"] = top_p
        if min_new_tokens:
            options["min_new_tokens"] = min_new_tokens
        if pad_token_id is not None:
            options["pad_token_id"] = pad_token_id
        if stopping_criteria is not None:
            options["stopping_criteria"] = stopping_criteria
        mask = torch.ones_like(ids) if mask is None else mask
        with self._decoding_options(mode, ids.shape[1] + max_new_tokens, ids.shape[0]) as speed:
            # decoder-only generate prefills from the embeddings and returns the prompt ids followed by the new ones
            return self.model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask,
                                       max_new_tokens=max_new_tokens, streamer=streamer, **options, **speed)

    @torch.inference_mode()
    def answer(self, frames: Any, question: str, history: Sequence[tuple[str, str]] = (), *, image: bool = False,
               max_new_tokens: int = 128, temperature: float = 0.0, streamer: Any = None,
               decoding: str | None = None) -> Answer:
        """Answer `question` about `frames` (a video, or an image with image=True) after earlier (question, answer)
        turns. Greedy unless temperature > 0; `decoding`: the engine's mode by default (module docstring)."""
        start = time.perf_counter()
        processor = self.processor
        prompt = processor.build_prompt(question, history)
        inputs = processor(images=[frames], text=prompt) if image else processor(videos=[frames], text=prompt)
        n_prompt = inputs["input_ids"].shape[1]
        limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        if limit is not None and n_prompt + max_new_tokens > limit:
            raise ContextLengthError(f"the prompt takes {n_prompt} tokens (video included) and the answer up to "
                                     f"{max_new_tokens}, more than the model's context of {limit} tokens; shorten the "
                                     "question or the history, or use fewer frames or --max-new-tokens")
        out = self.generate(dict(inputs), max_new_tokens=max_new_tokens, decoding=decoding, temperature=temperature,
                            streamer=streamer)
        new = out[0, n_prompt:]
        visual = int((inputs["input_ids"] == self.model.config.video_token_index).sum())
        return Answer(processor.decode(new), n_prompt, visual, int(new.numel()), time.perf_counter() - start)

    # -- decoding state: the kept cache, compiled parts ----------------------------------------------------------------
    def clear_caches(self) -> None:
        """Drop the kept static KV cache, the compiled decode step and the captured visual-encode graphs (their
        memory: a 7B cache at batch 32 holds tens of GB); the next call rebuilds what it needs. The caller holds no
        call in flight. Compiled element-wise ops stay (they hold no tensors)."""
        with self._lock:
            self._cache = self._step = self._graphed = None
    def _static_cache(self, batch_size: int, max_length: int) -> Any:
        """The kept StaticCache, reset, so its tensors keep their addresses: a compiled, CUDA-graph decode step is then
        captured once and replayed by every later call of the same batch size and bucket. A call that needs more
        room or another batch size replaces it. The caller holds `_lock`."""
        from transformers import StaticCache

        length = -(-max_length // CACHE_BUCKET) * CACHE_BUCKET
        if self._cache is not None and self._cache[0] == batch_size and self._cache[1] >= length:
            self._cache[2].reset()
            return self._cache[2]
        self._cache = None  # free the old one before allocating the new one
        cache = StaticCache(config=self.model.config.get_text_config(decoder=True), max_cache_len=length)
        self._cache = (batch_size, length, cache)
        return cache

    @contextlib.contextmanager
    def _decoding_options(self, mode: str, max_length: int, batch_size: int) -> Iterator[dict[str, Any]]:
        """`model.generate` keyword arguments for a resolved decoding mode. "static" and "compiled" use the kept
        static cache (sized for `max_length` and `batch_size`); while another call holds it, a fresh one."""
        if mode == "dynamic":
            yield {}
            return
        kwargs: dict[str, Any] = {}
        if mode == "static":
            kwargs["disable_compile"] = True
        else:
            from transformers import CompileConfig

            config = CompileConfig(fullgraph=True, mode="reduce-overhead")
            if self.device.type != "cuda":  # transformers compiles on CUDA only unless told otherwise
                config._compile_all_devices = True
            kwargs["compile_config"] = config
        if not self._lock.acquire(blocking=False):
            yield {**kwargs, "cache_implementation": "static"}
            return
        try:
            yield {**kwargs, self.model.cache_keyword: self._static_cache(batch_size, max_length)}
        finally:
            self._lock.release()

    def _compile_pointwise(self) -> None:
        """With "compiled" decoding on a GPU, also compile the LLM's element-wise ops: the prefill of a video prompt
        then runs them as fused kernels (7B on an H100: time to first token 78 -> 58 ms; docs/speed.md). Once."""
        if self.device.type != "cuda" or self._pointwise is not None:
            return
        self._pointwise = CompiledOps()
        compile_pointwise(self.model.language_model, self._pointwise)

    def _compiled_step(self) -> Callable[..., torch.Tensor]:
        """`_greedy_step` compiled for this engine: captured as a CUDA graph on a GPU (mode "reduce-overhead")."""
        if self._step is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._step = torch.compile(_greedy_step, mode=mode, fullgraph=True)
        return self._step

    # -- a lean greedy loop for single requests ------------------------------------------------------------------------
    def _greedy(self, input_ids: torch.Tensor, pixel_values: Any, crop_boxes: Any, max_new_tokens: int, *,
                compiled: bool, min_new_tokens: int = 0, streamer: Any = None) -> torch.Tensor:
        """Greedy answer to one request ([1, N] ids without padding) with the kept static cache: the prefill (visual
        encode + LLM) runs eagerly, then each new token costs one call of `_greedy_step`, a CUDA-graph replay when
        `compiled` on a GPU.

        Compared with transformers' `generate` this loop skips the per-step logits processors, mask building and
        bookkeeping, which cost milliseconds per token outside the graph, and it keeps the GPU one step ahead of the
        host: step i+1 is launched before token i is read back (one wasted step after the EOS token). It stops at an
        EOS token (after `min_new_tokens`) or after `max_new_tokens`, and returns [1, N + new] like `generate`. The
        caller holds `_lock`.
        """
        model = self.model
        n, device = input_ids.shape[1], input_ids.device
        cache = {model.cache_keyword: self._static_cache(1, n + max_new_tokens)}
        if streamer is not None:
            streamer.put(input_ids.cpu())
        embeds = self._embed(input_ids, pixel_values, crop_boxes, graphed=compiled)
        logits = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **cache).logits[:, -1].float()
        eos, new = _eos_ids(model), []
        bias = torch.zeros(logits.shape[-1], device=device)
        if min_new_tokens > 0 and eos:  # as transformers' MinNewTokensLengthLogitsProcessor
            bias[[e for e in eos if e < bias.numel()]] = float("-inf")
        step = self._compiled_step() if compiled else _greedy_step
        graphs = compiled and device.type == "cuda"
        host = _TokenReadback(max_new_tokens, device)
        token = (logits + bias).argmax(-1, keepdim=True)
        host.push(0, token)
        position = torch.full((1, 1), n, dtype=torch.long, device=device)
        for i in range(max_new_tokens):
            if i + 1 < max_new_tokens:  # launch token i+1 before reading token i back
                if i + 1 == min_new_tokens:
                    bias.zero_()
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step(model.language_model, token, position, cache)
                token = (logits.float() + bias).argmax(-1, keepdim=True)  # queued before the graph's next replay
                position.add_(1)
                host.push(i + 1, token)
            value = host.read(i)
            new.append(value)
            if streamer is not None:
                streamer.put(torch.tensor([value]))
            if value in eos and i + 1 >= min_new_tokens:
                break
        if streamer is not None:
            streamer.end()
        return torch.cat([input_ids, torch.tensor([new], dtype=input_ids.dtype, device=device)], 1)


def _fast_encoder(model: VideoPandaForCausalLM, options: FastOptions) -> FastEncoder | None:
    """The fused visual encoder, or None (with a warning) where it cannot be built: the plain STAB then encodes."""
    try:
        return FastEncoder(model, options)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        warnings.warn(f"fused STAB unavailable: {_first_line(err)}; encoding with the plain STAB", stacklevel=3)
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _greedy_step(lm: torch.nn.Module, token: torch.Tensor, position: torch.Tensor, cache: dict[str, Any]
                 ) -> torch.Tensor:
    """One decode step of the wrapped LLM: [1, 1] token at [1, 1] position -> [1, V] next-token logits in the model's
    dtype (the argmax is taken outside, on float32 copies, as transformers does, so compiled and eager agree).
    `cache`: {keyword: KV cache}, the keyword being the installed transformers' (`VideoPandaForCausalLM.cache_keyword`).
    """
    out = lm(input_ids=token, position_ids=position, use_cache=True, logits_to_keep=1, **cache)
    return out.logits[:, -1]


def _eos_ids(model: torch.nn.Module) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class _TokenReadback:
    """Copies each new token to the host without stopping the GPU: on CUDA, a non-blocking copy into pinned
    memory and an event per token; `read(i)` waits for token i only, not for the steps queued after it."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.empty(size, dtype=torch.long, pin_memory=self.cuda)
        self.events: list[Any] = [None] * size

    def push(self, i: int, token: torch.Tensor) -> None:
        self.host[i : i + 1].copy_(token.view(1), non_blocking=self.cuda)
        if self.cuda:
            self.events[i] = torch.cuda.Event()
            self.events[i].record()

    def read(self, i: int) -> int:
        if self.cuda:
            self.events[i].synchronize()
        return int(self.host[i])
