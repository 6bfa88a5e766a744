"""One place that turns (model name, video, question) into an answer; the CLI, server and evaluation call it.

Speed options (docs/speed.md has the measurements behind the defaults):
  * `decoding`: "dynamic" (transformers' `generate` with its default growing KV cache), "static" (a preallocated KV
    cache kept between calls, eager), "compiled" (static cache + a decode step compiled and captured as a CUDA graph;
    the first call pays the compilation, later calls are fast) or "auto" (see `DEFAULT_DECODING`). Single greedy
    requests in "static"/"compiled" take a lean loop (`greedy_generate`); batches and sampling take transformers'
    `generate` with the same cache and compilation settings. Greedy tokens are the same whichever is chosen (exactly
    in float32; in bfloat16 on a GPU, different kernels can round a near-tie the other way: docs/speed.md).
  * `load(..., quantization="8bit" | "4bit")`: bitsandbytes quantization of the LLM's Linear layers only; the STAB,
    the projector and the LM head stay in `dtype` (bfloat16 on GPU).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .modeling.videopanda import VideoPandaForCausalLM
from .processing import VideoPandaProcessor
from .weights import DEFAULT_MODEL, ModelSource, load_default_model, resolve_model


class ContextLengthError(ValueError):
    """The prompt plus the answer would not fit the LLM's context window."""


class QuantizationError(ValueError):
    """Quantized loading was asked for but cannot be done here (no bitsandbytes, no supported device, ...)."""


DECODING_MODES = ("auto", "dynamic", "static", "compiled")
# What "auto" means per device type (measured: bench/results/h100.json, docs/speed.md). transformers' dynamic cache
# on both: on an H100 (7B-shaped, 64 tokens after a 2.2k-token video prompt) it took 1.76 s against 1.87 s for the
# eager static-cache loop, with no warm-up; on a CPU a static cache gains nothing. "compiled" (0.51 s on the H100) is
# opt-in (--compile): its one-time compilation (~40-60 s for the 7B) only pays off over many answers (chat, serve) or
# long ones.
DEFAULT_DECODING = {"cpu": "dynamic", "cuda": "dynamic"}
QUANTIZATION_MODES = ("8bit", "4bit")
# Modules kept out of quantization (transformers' `llm_int8_skip_modules`, matched on module-name boundaries): the
# visual side is small and precision-sensitive, and the LM head is conventionally kept in 16 bits.
QUANTIZATION_SKIP_MODULES = ["video_tower", "video_projector", "language_model.lm_head"]
CACHE_BUCKET = 256  # static caches are sized up to a multiple of this, so prompts of similar length share one


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    visual_tokens: int
    new_tokens: int
    seconds: float


def resolve_device(device: str = "auto") -> torch.device:
    """"auto", "cpu", "cuda" or "cuda:N", checked: anything else is one clear ValueError, not a torch traceback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"--dtype must be one of auto, {', '.join(names)}; got {dtype!r}")
    return names[dtype]


def check_quantization(quantization: str | None, device: torch.device) -> None:
    """Raise a one-line QuantizationError unless `quantization` (None, "8bit" or "4bit") can run on `device`."""
    if quantization is None:
        return
    if quantization not in QUANTIZATION_MODES:
        raise QuantizationError(f"--load-in must be 8bit or 4bit, got {quantization!r}")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(f"--load-in {quantization} needs bitsandbytes: pip install 'videopanda[quant]' "
                                "(or pip install bitsandbytes)")
    if device.type == "cuda":
        return
    if device.type == "cpu":
        from importlib.metadata import version

        found = version("bitsandbytes")
        if tuple(int(x) for x in found.split(".")[:2] if x.isdigit()) >= (0, 46):
            return  # CPU kernels since 0.46: saves memory, but slower than bfloat16
        raise QuantizationError(f"--load-in {quantization} on CPU needs bitsandbytes >= 0.46 (found {found}); "
                                "pip install -U bitsandbytes, or use a CUDA GPU")
    raise QuantizationError(f"--load-in {quantization} on {device.type}: bitsandbytes is supported here on CUDA GPUs "
                            "and CPUs only; use --device cuda or --device cpu")


def quantization_config(quantization: str, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """transformers `BitsAndBytesConfig` for the LLM only (`QUANTIZATION_SKIP_MODULES` stay in 16 bits).

    "4bit" is NF4 with double quantization and `compute_dtype` matmuls (QLoRA's recipe); "8bit" is LLM.int8() with
    the default outlier threshold 6.0.
    """
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=list(QUANTIZATION_SKIP_MODULES))
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(QUANTIZATION_SKIP_MODULES))
    raise QuantizationError(f"quantization must be None, '8bit' or '4bit'; got {quantization!r}")


def load(model: str | Path = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
         quantization: str | None = None, subfolder: str | None = None, revision: str | None = None,
         source: ModelSource | None = None) -> tuple[VideoPandaForCausalLM, VideoPandaProcessor]:
    """Model (eval mode, on `device`) and its processor. The model gets `visual_weights_trained` (bool) and
    `loading_report` (where it came from: `weights.ModelSource.describe()`, and what was loaded).

    Args:
        model: "videopanda-default", a checkpoint folder (ours or an official Video-Panda one) or a hub id.
        device, dtype: see `resolve_device` / `resolve_dtype`.
        quantization: None, "8bit" or "4bit": bitsandbytes quantization of the LLM's Linear layers while loading
            (checkpoint folders only; the default model's LLM has 135M parameters and needs none).
        subfolder, revision: for hub ids (`jh-yi/Video-Panda-7B` means its `videopanda_fitu` subfolder).
        source: `model` already resolved by `weights.resolve_model` (the CLI resolves before loading).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if quantization is not None and str(model) == DEFAULT_MODEL:
        raise QuantizationError("--load-in is for checkpoint folders such as Video-Panda-7B; the default model's LLM "
                                "is small (135M parameters): use --dtype bfloat16 to halve its memory instead")
    check_quantization(quantization, dev)
    source = source or resolve_model(model, subfolder=subfolder, revision=revision)
    if source.kind == "default":
        net, trained = load_default_model(VideoPandaForCausalLM, dt)
        net.loading_report = {**source.describe(), "tensors": "bundled"}
        net = net.to(dev)
    elif quantization is None:
        net = VideoPandaForCausalLM.from_pretrained(source, dtype=dt).to(dev)
        trained = True
    else:  # a quantized model is placed while loading; it cannot be moved afterwards
        net = VideoPandaForCausalLM.from_pretrained(source, dtype=dt, device_map={"": dev},
                                                    quantization_config=quantization_config(quantization, dt))
        trained = True
    net.visual_weights_trained = trained
    net.eval()
    if dev.type == "cuda":  # the LLM's q/k/v and gate/up fused (checked at load; quantized layers stay as they are)
        from .fast import fuse_projections

        fuse_projections(net.language_model)
    return net, VideoPandaProcessor.from_pretrained(source.folder or DEFAULT_MODEL)


def resolve_decoding(decoding: str, device: torch.device) -> str:
    """"auto" -> the device's default (`DEFAULT_DECODING`); other modes are checked and returned."""
    if decoding not in DECODING_MODES:
        raise ValueError(f"decoding must be one of {', '.join(DECODING_MODES)}; got {decoding!r}")
    if decoding == "auto":
        return DEFAULT_DECODING.get(device.type, "dynamic")
    return decoding


def _bucket(length: int) -> int:
    return -(-length // CACHE_BUCKET) * CACHE_BUCKET


def _reusable_static_cache(model: torch.nn.Module, batch_size: int, max_length: int) -> Any:
    """A StaticCache kept on the model and reset for each call, so its tensors keep their addresses: the compiled,
    CUDA-graph decode step is then captured once and replayed by every later call of the same batch size and
    bucket. A call that needs more room or another batch size replaces it."""
    from transformers import StaticCache

    length = _bucket(max_length)
    held = getattr(model, "_videopanda_static_cache", None)
    if held is not None and held[0] == batch_size and held[1] >= length:
        with torch.inference_mode():  # its tensors were made under inference mode (generate, answer)
            held[2].reset()
        return held[2]
    model._videopanda_static_cache = None  # free the old one before allocating the new one
    cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=length)
    model._videopanda_static_cache = (batch_size, length, cache)
    return cache


def _cache_lock(model: torch.nn.Module) -> threading.Lock:
    return model.__dict__.setdefault("_videopanda_cache_lock", threading.Lock())


@contextlib.contextmanager
def decoding_options(model: torch.nn.Module, decoding: str = "auto", max_length: int | None = None,
                     batch_size: int = 1) -> Iterator[dict[str, Any]]:
    """`model.generate` keyword arguments for a decoding mode, as a context manager (transformers' own loop: used
    for batches and sampling; single greedy requests go through `generate`'s faster loop).

    For "static" and "compiled", `max_length` (prompt + new tokens) and `batch_size` size a static KV cache kept on
    the model between calls (rounded up to `CACHE_BUCKET` tokens); while one call uses it, a concurrent call gets a
    fresh one. "compiled" lets transformers compile the decode step with CUDA graphs. Greedy outputs are the same in
    every mode.
    """
    mode = resolve_decoding(decoding, model.device)
    if mode == "dynamic":
        yield {}
        return
    if mode == "compiled":
        _compile_pointwise_once(model)
    kwargs: dict[str, Any] = {}
    if mode == "static":
        kwargs["disable_compile"] = True
    else:
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=True, mode="reduce-overhead")
        if model.device.type != "cuda":  # transformers compiles on CUDA only unless told otherwise
            config._compile_all_devices = True
        kwargs["compile_config"] = config
    lock = _cache_lock(model)
    if max_length is None or not lock.acquire(blocking=False):
        yield {**kwargs, "cache_implementation": "static"}
        return
    try:
        yield {**kwargs, model.cache_keyword: _reusable_static_cache(model, batch_size, max_length)}
    finally:
        lock.release()


def _compile_pointwise_once(model: torch.nn.Module) -> None:
    """With "compiled" decoding on a GPU, also compile the LLM's element-wise ops (`fused_llm.compile_pointwise`):
    the prefill of a video prompt then runs them as fused kernels (7B on an H100: time to first token 78 -> 58 ms;
    docs/speed.md). Once per model."""
    if model.device.type != "cuda" or model.__dict__.get("_videopanda_pointwise"):
        return
    from .fast import compile_pointwise

    compile_pointwise(getattr(model, "language_model", model))
    model._videopanda_pointwise = True


# -- a lean greedy loop for single requests ----------------------------------------------------------------------------
def _greedy_step(lm: torch.nn.Module, token: torch.Tensor, position: torch.Tensor, cache: dict[str, Any]
                 ) -> torch.Tensor:
    """One decode step of the wrapped LLM: [1, 1] token at [1, 1] position -> [1, V] next-token logits in the model's
    dtype (the argmax is taken outside, on float32 copies, as transformers does, so compiled and eager agree).
    `cache`: {keyword: KV cache}, the keyword being the installed transformers' (`VideoPandaForCausalLM.cache_keyword`).
    """
    out = lm(input_ids=token, position_ids=position, use_cache=True, logits_to_keep=1, **cache)
    return out.logits[:, -1]


_COMPILED_STEP: dict[str, Any] = {}


def _compiled_step(device: torch.device) -> Callable[..., torch.Tensor]:
    """`_greedy_step` compiled once per process: captured as a CUDA graph on a GPU (mode "reduce-overhead")."""
    key = device.type
    if key not in _COMPILED_STEP:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED_STEP[key] = torch.compile(_greedy_step, mode=mode, fullgraph=True)
    return _COMPILED_STEP[key]


def _eos_ids(model: torch.nn.Module) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.inference_mode()
def greedy_generate(model: VideoPandaForCausalLM, input_ids: torch.Tensor, pixel_values: Any, max_new_tokens: int,
                    *, compiled: bool, min_new_tokens: int = 0, streamer: Any = None) -> torch.Tensor:
    """Greedy answer to one request ([1, N] ids without padding) with a static KV cache: the prefill (STAB + LLM)
    runs eagerly, then each new token costs one call of `_greedy_step`, a CUDA-graph replay when `compiled`.

    Compared with transformers' `generate` this loop skips the per-step logits processors, mask building and
    bookkeeping, which cost milliseconds per token outside the graph, and it keeps the GPU one step ahead of the
    host: step i+1 is launched before token i is read back (one wasted step after the EOS token). It stops at an
    EOS token (after `min_new_tokens`) or after `max_new_tokens`, and returns [1, N + new] like `generate`. The
    caller holds the model's cache lock.
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"greedy_generate answers one request at a time, got a batch of {input_ids.shape[0]}")
    n, device = input_ids.shape[1], input_ids.device
    cache = {model.cache_keyword: _reusable_static_cache(model, 1, n + max_new_tokens)}
    if streamer is not None:
        streamer.put(input_ids.cpu())
    if compiled and isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 5:
        embeds = model.embed_inputs(input_ids, None, visual=_graphed_visual(model, pixel_values))
        logits = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **cache)
    else:
        logits = model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True, logits_to_keep=1, **cache)
    logits = logits.logits[:, -1].float()
    eos, new = _eos_ids(model), []
    bias = torch.zeros(logits.shape[-1], device=device)
    if min_new_tokens > 0 and eos:  # as transformers' MinNewTokensLengthLogitsProcessor
        bias[[e for e in eos if e < bias.numel()]] = float("-inf")
    step = _compiled_step(device) if compiled else _greedy_step
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


def _graphed_visual(model: VideoPandaForCausalLM, pixel_values: torch.Tensor) -> torch.Tensor:
    """The prompt's visual tokens ([N, D]) from a `GraphedEncoder` kept on the model: on a GPU the compiled STAB +
    projector replayed as one CUDA graph per input shape and crop layout (7B, one video on an H100: 0.62 ms against
    2-3.5 ms for the launch-bound eager encode; docs/speed.md), elsewhere the plain encode. The crop boxes are read
    once here (one small copy to the host, as the eager STAB reads them)."""
    from .fast import FusedSTAB, GraphedEncoder

    encoder = getattr(model, "_videopanda_graphed_encoder", None)
    if encoder is None:
        encoder = GraphedEncoder(FusedSTAB(model.video_tower), model.video_projector, compile=pixel_values.is_cuda)
        model._videopanda_graphed_encoder = encoder
    return encoder(pixel_values, encoder.stab.crop_boxes_for(pixel_values))


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


def generate(model: VideoPandaForCausalLM, inputs: dict[str, Any], *, max_new_tokens: int, decoding: str = "auto",
             temperature: float = 0.0, min_new_tokens: int = 0, streamer: Any = None,
             pad_token_id: int | None = None) -> torch.Tensor:
    """Token ids ([B, N + new]) for model inputs already on the model's device, in a decoding mode.

    A single greedy request in "static" or "compiled" mode takes `greedy_generate`'s lean loop (the static cache,
    and for "compiled" the CUDA-graph step); batches, sampling and "dynamic" take transformers' `generate` (with the
    mode's cache and compilation). Greedy tokens are the same whichever path runs.
    """
    mode = resolve_decoding(decoding, model.device)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    single = ids.shape[0] == 1 and (mask is None or bool(mask.all()))
    if mode != "dynamic" and single and temperature <= 0:
        if mode == "compiled":
            _compile_pointwise_once(model)
        lock = _cache_lock(model)
        if lock.acquire(blocking=False):
            try:
                return greedy_generate(model, ids, inputs.get("pixel_values"), max_new_tokens,
                                       compiled=mode == "compiled", min_new_tokens=min_new_tokens, streamer=streamer)
            finally:
                lock.release()
    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    if pad_token_id is not None:
        extra["pad_token_id"] = pad_token_id
    with decoding_options(model, mode, ids.shape[1] + max_new_tokens, ids.shape[0]) as speed:
        return model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **sampling, **extra,
                              **speed)


@torch.inference_mode()
def answer(model: VideoPandaForCausalLM, processor: VideoPandaProcessor, frames: Any, question: str,
           history: Sequence[tuple[str, str]] = (), *, image: bool = False, max_new_tokens: int = 128,
           temperature: float = 0.0, streamer: Any = None, decoding: str = "auto") -> Answer:
    """Answer `question` about `frames` (a video, or an image with image=True) after earlier (question, answer)
    turns. Greedy unless temperature > 0. `decoding`: "auto", "dynamic", "static" or "compiled" (module docstring)."""
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
    out = generate(model, dict(inputs), max_new_tokens=max_new_tokens, decoding=decoding, temperature=temperature,
                   streamer=streamer)
    new = out[0, n_prompt:]
    visual = int((inputs["input_ids"] == model.config.video_token_index).sum())
    return Answer(processor.decode(new), n_prompt, visual, int(new.numel()), time.perf_counter() - start)
