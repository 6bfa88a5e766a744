"""Speed and memory benchmarks: `videopanda bench` (docs/speed.md says what every number means).

Sections (--sections, comma-separated; all by default):
  stab      our STAB + projector: latency and videos/s per batch size, eager, fused (`fast.FusedSTAB`, what the
            `Engine` encodes with) and, with --compile, torch.compile'd; with --reference-dir, the public reference
            `VideoTokenizer` side by side, with the same weights and inputs, in the same process.
  vit       the encoder anchor: CLIP ViT-L/14 at 224 px + a 2-layer MLP projector (random weights), 8 frames a video.
  generate  time to first token, decode tokens/s and end-to-end answer latency (pixel_values -> text) for N new
            tokens after the video prompt, per LLM and decoding mode (dynamic cache, static cache, static + compiled).
  eval      answers/s of batched VideoQA generation (left padding, short answers) per batch size; for LLMs whose
            videos can be written here (PyAV), also a whole `run_videoqa` over synthetic clips (decode included).
  memory    weights in memory per model, and the 7B-shaped LLM quantized to 8/4 bits (CUDA + bitsandbytes).
Every measurement also records its peak memory (GPU: torch's peak allocation; CPU: the process's peak RSS).

LLMs (--llm): "default" (the bundled model: SmolLM2-135M + our STAB weights), "default-random" (its shapes, random
weights), "7b-random" (LLaMA-7B shapes, random bf16 weights built directly on the GPU, with the paper's STAB:
C=1024 at 448 px), "tiny" (for tests). Random-weight models use a synthetic word-level tokenizer; answers are forced
to exactly N tokens (min_new_tokens) so every mode decodes the same amount.

Nothing here downloads anything. torch and transformers are imported when a benchmark runs, not at import.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .configuration import VARIANTS

SECTIONS = ("stab", "vit", "generate", "eval", "memory")
LLMS = ("default", "default-random", "7b-random", "tiny")
DECODINGS = ("dynamic", "static", "compiled")
STAB_CONFIGS = {"default": "videopanda-default", "7b": "videopanda-7b", "tiny": "videopanda-tiny"}

# The random-weight LLMs (LLaMA architecture) by STAB config: each that variant's own LLM shape.
RANDOM_LLMS = {"default-random": "default", "7b-random": "7b", "tiny": "tiny"}
VIT_CONFIGS = {  # CLIP ViT-L/14 at 224 (LLaVA's and LanguageBind's encoder), and a tiny one for tests
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=224, patch_size=14),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                 patch_size=14),
}
QUESTION = "What is happening in this video? Describe the main action and the objects in detail."


# -- arguments ---------------------------------------------------------------------------------------------------------
def _csv(kind: type = str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `videopanda bench` flags. Defaults that depend on the device are None here and filled in by `settings`."""
    p.add_argument("--sections", type=_csv(), default=list(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16")
    p.add_argument("--llm", type=_csv(), default=None,
                   help=f"LLMs for generate/eval/memory, from {','.join(LLMS)} (default: 'default' on CPU, "
                        "'default-random,7b-random' on GPU)")
    p.add_argument("--stab-configs", type=_csv(), default=None,
                   help="STAB shapes for the stab section: default (C384, 224 px), 7b (C1024, 448 px), tiny "
                        "(default: 'default' on CPU, 'default,7b' on GPU)")
    p.add_argument("--batch-sizes", type=_csv(int), default=None,
                   help="videos per STAB call (default: 1,8 on CPU, 1,8,32 on GPU)")
    p.add_argument("--vit", choices=tuple(VIT_CONFIGS), default="large", help="ViT anchor size (default: large)")
    p.add_argument("--vit-batch-sizes", type=_csv(int), default=None,
                   help="videos per ViT call, 8 frames each (default: 1 on CPU, 1,8 on GPU)")
    p.add_argument("--frames", type=int, default=8, help="frames per video (default: %(default)s)")
    p.add_argument("--frame-size", type=int, default=448,
                   help="side of the square synthetic source frames in pixels (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=64, help="answer length for generate (default: %(default)s)")
    p.add_argument("--decoding", type=_csv(), default=None,
                   help="decoding modes for generate, from dynamic,static,compiled (default: dynamic,static on CPU, "
                        "all three on GPU)")
    p.add_argument("--eval-batch-sizes", type=_csv(int), default=None,
                   help="questions per generate call in the eval section (default: 1,8 on CPU, 1,8,32 on GPU)")
    p.add_argument("--eval-new-tokens", type=int, default=8, help="short-answer length for eval (default: 8)")
    p.add_argument("--eval-decoding", type=_csv(), default=["dynamic"],
                   help="decoding modes of the batched eval generate, from dynamic,static,compiled (default: dynamic, "
                        "what `videopanda eval` uses)")
    p.add_argument("--no-eval-e2e", dest="eval_e2e", action="store_false",
                   help="skip the whole-pipeline run_videoqa measurement over synthetic clip files")
    p.add_argument("--quant", type=_csv(), default=None,
                   help="memory section: quantized variants of the 7B-shaped LLM, from 8bit,4bit (default: both when "
                        "CUDA and bitsandbytes are there, else none)")
    p.add_argument("--compile", action="store_true",
                   help="also time a torch.compile'd STAB (and compiled decoding on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default: 3 CPU, 5 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before timing (default: 1 CPU, 2 GPU)")
    p.add_argument("--reference-dir", default=None,
                   help="folder holding the public reference STAB (jh-yi/Video-Panda's vision_tokenizer.py, or the "
                        "repo root); it is timed beside ours (7B STAB shape). Never committed here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; on a machine shared with other jobs, fewer "
                        "threads than cores avoids oversubscription)")
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    p.add_argument("--quiet", action="store_true", help="do not print the JSON at the end")


def settings(args: argparse.Namespace, device_type: str) -> dict[str, Any]:
    """The effective settings: the flags with device-dependent defaults filled in, checked."""
    gpu = device_type == "cuda"
    s = dict(vars(args))
    s.pop("func", None)
    defaults = dict(llm=["default-random", "7b-random"] if gpu else ["default"],
                    stab_configs=["default", "7b"] if gpu else ["default"],
                    batch_sizes=[1, 8, 32] if gpu else [1, 8], vit_batch_sizes=[1, 8] if gpu else [1],
                    decoding=list(DECODINGS) if gpu or args.compile else ["dynamic", "static"],
                    eval_batch_sizes=[1, 8, 32] if gpu else [1, 8], repeats=5 if gpu else 3, warmup=2 if gpu else 1,
                    quant=["8bit", "4bit"] if gpu and _has("bitsandbytes") else [])
    for key, value in defaults.items():
        if s.get(key) is None:
            s[key] = value
    _check(s)
    return s


def _check(s: dict[str, Any]) -> None:
    def subset(name: str, allowed: tuple[str, ...] | list[str]) -> None:
        bad = [x for x in s[name] if x not in allowed]
        if bad:
            raise ValueError(f"--{name.replace('_', '-')}: unknown {bad}; expected some of {', '.join(allowed)}")
    subset("sections", SECTIONS)
    subset("llm", LLMS)
    subset("stab_configs", list(STAB_CONFIGS))
    subset("decoding", DECODINGS)
    subset("eval_decoding", DECODINGS)
    subset("quant", ("8bit", "4bit"))
    for name in ("batch_sizes", "vit_batch_sizes", "eval_batch_sizes"):
        if any(b < 1 for b in s[name]):
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("frames", "frame_size", "new_tokens", "eval_new_tokens", "repeats"):
        if s[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {s[name]}")
    if s["threads"] is not None and s["threads"] < 1:
        raise ValueError("--threads must be >= 1")
    if s["warmup"] < 0:
        raise ValueError("--warmup must be >= 0")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- measuring ---------------------------------------------------------------------------------------------------------
class Clock:
    """Times a callable on one device: CUDA events around each call on a GPU (the GPU's own time, after a sync),
    perf_counter on a CPU. Returns medians in milliseconds, and the peak memory of the timed calls."""

    def __init__(self, device: Any, warmup: int, repeats: int) -> None:
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], *, events: bool = True, warmup: int | None = None,
             repeats: int | None = None) -> dict[str, Any]:
        import torch

        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        self.sync()
        times = []
        with peak_memory(self.device) as peak:
            for _ in range(self.repeats if repeats is None else repeats):
                if self.cuda and events:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    fn()
                    self.sync()
                    times.append((time.perf_counter() - t0) * 1000)
        return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
                "max_ms": round(max(times), 3), "repeats": len(times), "peak_mem_mb": peak["mb"]}


@contextlib.contextmanager
def peak_memory(device: Any) -> Iterator[dict[str, float | None]]:
    """{"mb": peak} filled on exit: torch's peak allocation on a GPU; on a CPU the process's peak resident set
    (VmHWM, reset on entry where Linux allows it), which includes everything the process holds."""
    import torch

    result: dict[str, float | None] = {"mb": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    yield result
    result["mb"] = _vm_hwm_mb()


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def environment(device: Any) -> dict[str, Any]:
    """Device name, library versions, commit: what a reader needs to compare two result files."""
    import torch
    import transformers

    info: dict[str, Any] = {"type": device.type, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    else:
        info["name"] = info["cpu"]
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["videopanda"] = version("videopanda")
    if _has("bitsandbytes"):
        from importlib.metadata import version

        versions["bitsandbytes"] = version("bitsandbytes")
    return {"device": info, "versions": versions, "git_commit": _git_commit()}


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: on a shared machine, how much else was running beside the benchmark."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    with contextlib.suppress(OSError):
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()
        return ref
    return None


# -- inputs and models -------------------------------------------------------------------------------------------------
def synthetic_videos(n: int, frames: int, size: int, seed: int = 0) -> list[Any]:
    """`n` different videos of `frames` square noise frames, [T, size, size, 3] uint8 (every pixel valid)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8) for _ in range(n)]


def pixel_values(videos: list[Any], variant: str) -> Any:
    """[B, T, 4, S, S] float32 for a STAB variant (the processor's anypixel resize, pad, normalise, mask)."""
    import torch

    from .transforms import frames_to_pixel_values

    v = VARIANTS[variant]
    return torch.stack([frames_to_pixel_values(x, num_frames=v["num_frames"], image_size=v["image_size"],
                                               teacher_size=v["teacher_image_size"], patch_size=14) for x in videos])


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def synthetic_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over `vocab_size` made-up words ("w0" unk/pad, "w1" bos, "w2" eos): the random-weight
    LLMs need one to turn prompts into ids and ids into text, and no real one can be downloaded here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0", bos_token="w1",
                                   eos_token="w2")


def build_model(llm: str, device: Any, dtype: Any, fuse_llm: bool | None = None) -> tuple[Any, Any, str]:
    """(`Engine`, processor, STAB config name). "default" loads the bundled model; the others get random weights,
    built directly on `device` in `dtype` (a 7B-shaped model in a few seconds on a GPU). `fuse_llm`: as for `Engine`
    (default: fused LLM projections on CUDA)."""
    import torch

    from .configuration import variant_config
    from .engine import Engine
    from .modeling.videopanda import VideoPandaForCausalLM
    from .processing import VideoPandaProcessor

    if llm == "default":
        engine = Engine.load("videopanda-default", device=str(device), dtype=_dtype_name(dtype), fuse_llm=fuse_llm)
        return engine, engine.processor, "default"
    stab = RANDOM_LLMS[llm]
    variant = STAB_CONFIGS[stab]
    vocab_size = VARIANTS[variant]["text_config"]["vocab_size"]
    config = variant_config(variant, text_config={"dtype": str(dtype).removeprefix("torch.")},
                            video_token_index=vocab_size, prompt_format="videopanda_v1")
    torch.manual_seed(0)
    with _default_dtype(dtype), torch.device(device):
        model = VideoPandaForCausalLM(config)
    model = model.to(device, dtype).eval()
    model.generation_config.pad_token_id = 0
    processor = VideoPandaProcessor(synthetic_tokenizer(vocab_size), config)
    return Engine(model, processor, fuse_llm=fuse_llm), processor, stab


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _weights_mb(module: Any) -> float:
    tensors = [*module.parameters(), *module.buffers()]
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def _free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- section: STAB (ours, fused, compiled, reference) ------------------------------------------------------------------
def _visual_encoder(variant: str, llm_width: int, device: Any, dtype: Any) -> Any:
    """STAB + mlp2x_gelu projector of a named variant, random weights (the model's own init)."""
    import torch
    from torch import nn

    from .configuration import variant_config
    from .modeling.stab import STAB

    c = variant_config(variant)  # its visual fields; the projector below maps them to `llm_width`
    torch.manual_seed(0)
    stab = STAB(c.stab_hidden_size, c.stab_num_heads, patch_size=c.patch_size, conv_stride=c.conv_stride,
                chunk_size=c.chunk_size, lste_reduction=c.lste_reduction, mlp_ratio=c.gstra_mlp_ratio,
                dropout=c.dropout, empty_frame_patches=c.empty_frame_patches)
    projector = nn.Sequential(nn.Linear(c.stab_hidden_size, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
    return stab.to(device, dtype).eval(), projector.to(device, dtype).eval()


LLM_WIDTH = {"default": 576, "7b": 4096, "tiny": 64}


def bench_stab(s: dict[str, Any], clock: Clock, device: Any, dtype: Any, log: Callable[[str], None]) -> dict:
    import torch

    rows, checks = [], []
    for name in s["stab_configs"]:
        variant = STAB_CONFIGS[name]
        stab, projector = _visual_encoder(variant, LLM_WIDTH[name], device, dtype)
        inputs = {b: pixel_values(synthetic_videos(b, s["frames"], s["frame_size"], seed=b), variant).to(device, dtype)
                  for b in s["batch_sizes"]}
        reference = _reference_for(s, name, stab, projector, device, dtype, log, checks, inputs)

        def ours(px: torch.Tensor, stab=stab, projector=projector) -> torch.Tensor:
            return projector(stab(px).tokens)

        impls: list[tuple[str, Callable]] = [("ours-eager", ours)]
        if reference is not None:
            impls.append(("reference", reference))
        for impl, fn in impls:
            rows += _time_batches(s, clock, inputs, fn, name, impl, stab, log)
        from .fast import FusedSTAB

        with torch.no_grad():
            stab = FusedSTAB(stab)

        def ours(px: torch.Tensor, stab=stab, projector=projector) -> torch.Tensor:  # noqa: F811  (the fused form)
            return projector(stab(px).tokens)

        rows += _time_batches(s, clock, inputs, ours, name, "ours-fused", stab, log)
        if s["compile"] and name == s["stab_configs"][-1] and device.type == "cuda":
            # GraphedEncoder first: a form timed after other CUDA graphs of the same process ran 0.1-0.15 ms slower
            # at 8 videos than timed first (docs/speed.md, "Order effects"), and a user runs one form, not both
            for impl, make in (("ours-graph-manual", _graphed_manual), ("ours-graph", _graphed)):
                try:
                    graphed = make(stab, projector, inputs)
                    rows += _time_batches(s, clock, inputs, graphed, name, impl, stab, log)
                    with torch.inference_mode():  # the same tokens as the fused eager form
                        px = next(iter(inputs.values()))
                        diff = (graphed(px).float() - ours(px).float()).abs().max().item()
                    checks.append({"config": name, "impl": impl, "vs": "ours-fused", "max_abs_diff": diff})
                    log(f"  stab {name}: {impl} vs fused eager max |diff| {diff:.3g}")
                except Exception as err:  # keep the section's other rows
                    checks.append({"config": name, "impl": impl, "error": f"{type(err).__name__}: {err}"[:300]})
                    log(f"  stab {name}: {impl} failed: {type(err).__name__}: {err}")
                graphed = None
                _free(device)
        if s["compile"] and name == s["stab_configs"][-1]:  # one config: each batch size compiles anew
            stab.compile(dynamic=False)  # as `FastEncoder.compile()`: static shapes
            projector.compile(dynamic=False)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for px in inputs.values():
                    ours(px)
            clock.sync()
            log(f"  stab {name}: compiled for {len(inputs)} batch sizes in {time.perf_counter() - t0:.1f}s")
            rows += _time_batches(s, clock, inputs, ours, name, "ours-compiled", stab, log)
        del stab, projector, inputs, reference
        _free(device)
    return {"rows": rows, "reference_check": checks}


def _graphed(stab: Any, projector: Any, inputs: dict) -> Callable:
    """STAB + projector compiled with mode "reduce-overhead" (replayed as CUDA graphs) with the crop boxes read on
    the host beforehand (`STAB.crop_boxes_for`, as a caller does on the processor's output; not timed), so the call
    has no host sync: what `FastEncoder.compile(mode="reduce-overhead")` runs when given host crop boxes."""
    import torch

    boxes = _host_boxes(stab, inputs)

    def encode(px: torch.Tensor) -> torch.Tensor:
        return projector(stab(px, crop_boxes=boxes[px.shape[0]]).tokens)

    return torch.compile(encode, mode="reduce-overhead", dynamic=False)


def _graphed_manual(stab: Any, projector: Any, inputs: dict) -> Callable:
    """The same encode captured by `fast.GraphedEncoder` (the `Engine`'s encoder for "compiled" decoding): one CUDA
    graph per batch size, replayed with one input copy and one launch (no torch.compile bookkeeping on the host per
    call)."""
    from .fast import GraphedEncoder

    encoder = GraphedEncoder(stab, projector, max_graphs=len(inputs))
    boxes = _host_boxes(stab, inputs)
    return lambda px: encoder(px, boxes[px.shape[0]])


def _host_boxes(stab: Any, inputs: dict) -> dict[int, list]:
    """Batch size -> the frames' crop boxes, read from a host copy once (outside the timed calls)."""
    return {px.shape[0]: stab.crop_boxes_for(px.cpu()) for px in inputs.values()}


def _time_batches(s: dict, clock: Clock, inputs: dict, fn: Callable, name: str, impl: str, stab: Any,
                  log: Callable[[str], None]) -> list[dict]:
    import torch

    rows = []
    for b, px in inputs.items():
        with torch.inference_mode():
            out = fn(px)
            tokens = sum(t.shape[0] for t in out) if isinstance(out, list) else out.shape[0]
            r = clock.time(lambda: fn(px))
        row = {"config": name, "impl": impl, "batch": b, "frames": s["frames"], "canvas": px.shape[-1],
               "stab_width": stab.dim, "tokens_per_video": tokens // b, **r,
               "videos_per_s": round(b / (r["median_ms"] / 1000), 2),
               "frames_per_s": round(b * s["frames"] / (r["median_ms"] / 1000), 1)}
        rows.append(row)
        log(f"  stab {name:7s} {impl:13s} batch {b:3d}: {r['median_ms']:9.2f} ms  {row['videos_per_s']:8.1f} videos/s")
    return rows


def load_reference_stab(folder: str | Path) -> Any:
    """The reference `VideoTokenizer` class from a folder holding jh-yi/Video-Panda's `vision_tokenizer.py` (the
    file itself, or the repo root). Its imports of the reference package (constants, LanguageBind processors) are
    replaced by stand-ins holding the only numbers it reads; einops is needed, timm is optional (DropPath is unused
    at drop_path=0)."""
    import types

    root = Path(folder)
    candidates = [root / "vision_tokenizer.py", root / "videopanda/model/multimodal_encoder/vision_tokenizer.py"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        tried = ", ".join(map(str, candidates))
        raise FileNotFoundError(f"--reference-dir {folder}: no vision_tokenizer.py (tried {tried})")
    if not _has("einops"):
        raise ImportError("the reference STAB needs einops: pip install einops")
    source = path.read_text()
    lb = "from videopanda.model.multimodal_encoder.languagebind"
    replaced = {
        "from videopanda.constants import IMAGE_TOKEN_INDEX, NUM_FRAMES": "IMAGE_TOKEN_INDEX, NUM_FRAMES = -200, 8",
        f"{lb}.image.processing_image import LanguageBindImageProcessor": "LanguageBindImageProcessor = None",
        f"{lb}.video.processing_video import LanguageBindVideoProcessor":
            "class LanguageBindVideoProcessor:\n    def __init__(self, config):\n"
            "        self.patch_stride, self.conv_stride = config.patch_stride, config.conv_stride",
    }
    if not _has("timm"):
        replaced["from timm.models.layers import DropPath"] = "DropPath = None"
    for old, new in replaced.items():
        if old not in source:
            raise ValueError(f"{path}: expected the line {old!r}; is this the reference's vision_tokenizer.py?")
        source = source.replace(old, new)
    module = types.ModuleType("videopanda_reference_vision_tokenizer")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own copy of the reference
    return module.VideoTokenizer


def _reference_for(s: dict, name: str, stab: Any, projector: Any, device: Any, dtype: Any,
                   log: Callable[[str], None], checks: list, inputs: dict) -> Callable | None:
    """The reference STAB with our weights, as `fn(pixel_values) -> list of per-frame tokens` (its own per-video,
    per-frame loops, as its `encode_videos` calls it); None without --reference-dir or for widths it cannot build."""
    import torch

    if not s["reference_dir"]:
        return None
    if stab.dim not in (1024, 1152, 1408):
        log(f"  reference: skipped for {name} (it only builds widths 1024, 1152, 1408)")
        return None
    cls = load_reference_stab(s["reference_dir"])
    cfg = argparse.Namespace(mm_video_tower="config/videopanda-video-LB-patch14-anypixel-448")  # "LB": its branch
    video_cfg = argparse.Namespace(patch_stride=stab.patch_size, conv_stride=stab.conv_stride)
    ref = cls(stab.dim, cfg, video_cfg)
    result = ref.load_state_dict(stab.state_dict(), strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.startswith("lmhra2.")]
    if unexpected or missing:
        raise ValueError(f"reference STAB: our weights do not map onto it: missing {missing}, unexpected {unexpected}")
    ref = ref.to(device, dtype).eval()
    chunk = stab.chunk_size

    def run(px: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for video in px:  # the reference's encode_videos: one call per video, its chunks as the batch
            chunks = torch.stack(video.chunk(video.shape[0] // chunk, dim=0))
            out.extend(ref(chunks, projector)[0])
        return out

    with torch.inference_mode():
        px = inputs[min(inputs)]
        theirs = torch.cat(run(px)).float()
        ours = projector(stab(px).tokens).float()
    diff = (theirs - ours).abs().max().item() if theirs.shape == ours.shape else None
    scale = ours.abs().max().item()
    checks.append({"config": name, "batch": min(inputs), "same_shape": theirs.shape == ours.shape,
                   "tokens": list(ours.shape), "max_abs_diff": diff, "max_abs_ours": round(scale, 4),
                   "dtype": _dtype_name(dtype)})
    log(f"  reference check ({name}, {_dtype_name(dtype)}): max |ours - reference| = {diff} (|ours| max {scale:.3g})")
    return run


# -- section: ViT-L/14 anchor ------------------------------------------------------------------------------------------
def bench_vit(s: dict[str, Any], clock: Clock, device: Any, dtype: Any, log: Callable[[str], None]) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from .transforms import CLIP_MEAN, CLIP_STD

    cfg = CLIPVisionConfig(**VIT_CONFIGS[s["vit"]])
    width = max(LLM_WIDTH[c] for c in s["stab_configs"])
    torch.manual_seed(0)
    with _default_dtype(dtype), torch.device(device):
        vit = CLIPVisionModel(cfg)
        projector = nn.Sequential(nn.Linear(cfg.hidden_size, width), nn.GELU(), nn.Linear(width, width))
    vit, projector = vit.to(device, dtype).eval(), projector.to(device, dtype).eval()
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def prepare(videos: list) -> torch.Tensor:  # CLIP preprocessing of square frames: resize, normalise
        x = torch.from_numpy(__import__("numpy").concatenate(videos)).to(device).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bicubic", align_corners=False)
        return ((x - mean) / std).to(dtype)

    def encode(x: torch.Tensor) -> torch.Tensor:  # LLaVA: penultimate layer, patch tokens only, then the projector
        hidden = vit(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        return projector(hidden)

    rows = []
    for b in s["vit_batch_sizes"]:
        x = prepare(synthetic_videos(b, s["frames"], s["frame_size"], seed=b))
        with torch.inference_mode():
            tokens = encode(x).shape[0] * encode(x).shape[1] // b
            r = clock.time(lambda: encode(x))
        row = {"model": f"clip-vit-{s['vit']}-patch14-{cfg.image_size}+mlp2x_gelu", "batch": b,
               "frames": s["frames"], "images": x.shape[0], "llm_width": width, "tokens_per_video": tokens, **r,
               "videos_per_s": round(b / (r["median_ms"] / 1000), 2),
               "frames_per_s": round(x.shape[0] / (r["median_ms"] / 1000), 1)}
        rows.append(row)
        log(f"  vit {s['vit']} batch {b:3d} ({x.shape[0]} images): {r['median_ms']:9.2f} ms  "
            f"{row['videos_per_s']:8.1f} videos/s")
    params = sum(p.numel() for p in vit.parameters())
    vit = projector = None  # freed before the next section (not `del`: closures use them)
    _free(device)
    return {"rows": rows, "vit_params": params}


# -- section: generation -----------------------------------------------------------------------------------------------
def _generate_once(engine: Any, processor: Any, inputs: dict, n_prompt: int, new_tokens: int, decoding: str
                   ) -> tuple[Any, str]:
    """pixel_values (host) -> text, as `Engine.answer` runs it: copy to the device, STAB + prefill + `new_tokens`
    greedy steps (exactly: EOS is held back until then), decode."""
    out = engine.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, decoding=decoding,
                          pad_token_id=processor.tokenizer.pad_token_id)
    tokens = out[0, n_prompt:].cpu()
    return tokens, processor.decode(tokens)


def bench_generate(s: dict[str, Any], clock: Clock, device: Any, dtype: Any, log: Callable[[str], None],
                   models: Callable[[str], tuple]) -> dict:
    rows = []
    for llm in s["llm"]:
        engine, processor, stab = models(llm)
        videos = synthetic_videos(1, s["frames"], s["frame_size"], seed=100)
        inputs = dict(processor(videos=videos, text=processor.build_prompt(QUESTION)))
        n_prompt = inputs["input_ids"].shape[1]
        n_visual = int((inputs["input_ids"] == engine.model.config.video_token_index).sum())
        baseline = None
        for mode in s["decoding"]:
            if mode == "compiled" and getattr(engine.model, "hf_quantizer", None) is not None:
                continue
            try:
                rows.append(row := _generate_mode(s, clock, engine, processor, inputs, n_prompt, mode, device, log,
                                                  llm))
            except Exception as err:  # one failing mode (e.g. no compiler here) must not lose the others
                rows.append({"llm": llm, "decoding": mode, "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc()[-4000:]})
                log(f"  generate {llm} {mode}: FAILED {type(err).__name__}: {err}")
                continue
            tokens = row.pop("_tokens")
            baseline = tokens if baseline is None else baseline
            differ = (tokens != baseline).nonzero()
            row.update(prompt_tokens=n_prompt, visual_tokens=n_visual, stab=stab,
                       same_tokens_as_first_mode=not differ.numel(),
                       first_difference=int(differ[0]) if differ.numel() else None)
        del engine, processor
        if not _freed(device, rows, log):
            break
    return {"rows": rows}


def _freed(device: Any, errors: list, log: Callable[[str], None]) -> bool:
    """`_free`, or False with an error appended when the device cannot be used any more: a kernel fault in the
    work before leaves the CUDA context broken, and every later call fails with it. The rows measured so far
    stay."""
    try:
        _free(device)
        return True
    except RuntimeError as err:
        errors.append({"error": f"the device is unusable after this: {type(err).__name__}: {err}"[:600]})
        log(f"  device unusable: {type(err).__name__}: {err}")
        return False


def _generate_mode(s: dict, clock: Clock, engine: Any, processor: Any, inputs: dict, n_prompt: int, mode: str,
                   device: Any, log: Callable[[str], None], llm: str) -> dict:
    """One decoding mode: a first call (compilation included, for "compiled"), warm-up, then `repeats` pairs of a
    1-token call (time to first token) and an n-token call (end to end), interleaved so that a machine whose load
    drifts affects both alike; the decode rate is the median over pairs of (n - 1) / (e2e - ttft)."""
    n = s["new_tokens"]

    def call(k: int) -> tuple[float, Any]:
        t0 = time.perf_counter()
        tokens, _ = _generate_once(engine, processor, inputs, n_prompt, k, mode)
        clock.sync()
        return (time.perf_counter() - t0) * 1000, tokens

    repeats = max(2, s["repeats"] // 2 + 1)  # 3 for the GPU default of 5: each pair is a whole answer
    first_call_ms, tokens = call(n)
    for _ in range(max(s["warmup"] - 1, 0) + (2 if mode == "compiled" else 0)):  # CUDA graphs are recorded late
        call(n)
    call(1)
    ttft, e2e, rates = [], [], []
    with peak_memory(device) as peak:
        for _ in range(repeats):
            ttft.append(call(1)[0])
            ms, tokens = call(n)
            e2e.append(ms)
            if n > 1 and e2e[-1] > ttft[-1]:
                rates.append((n - 1) / ((e2e[-1] - ttft[-1]) / 1000))
    row = {"llm": llm, "decoding": mode, "new_tokens": n, "first_call_s": round(first_call_ms / 1000, 2),
           "ttft_ms": round(statistics.median(ttft), 2), "ttft_min_ms": round(min(ttft), 2),
           "e2e_ms": round(statistics.median(e2e), 2), "e2e_min_ms": round(min(e2e), 2),
           "e2e_max_ms": round(max(e2e), 2),
           "decode_tokens_per_s": round(statistics.median(rates), 1) if rates else None,
           "repeats": len(e2e), "peak_mem_mb": peak["mb"], "_tokens": tokens}
    log(f"  generate {llm:14s} {mode:8s}: ttft {row['ttft_ms']:8.1f} ms  e2e {row['e2e_ms']:8.1f} ms for {n} tokens "
        f" decode {row['decode_tokens_per_s']} tok/s  (first call {row['first_call_s']:.1f}s)")
    return row


# -- section: batched VideoQA ------------------------------------------------------------------------------------------
def bench_eval(s: dict[str, Any], clock: Clock, device: Any, dtype: Any, log: Callable[[str], None],
               models: Callable[[str], tuple]) -> dict:
    import torch

    from .eval import videoqa

    rows, e2e = [], []
    k = s["eval_new_tokens"]
    for llm in s["llm"]:
        engine, processor, _ = models(llm)
        model = engine.model
        pool = [processor.preprocess(v) for v in synthetic_videos(min(8, max(s["eval_batch_sizes"])), s["frames"],
                                                                   s["frame_size"], seed=200)]
        cast = model.dtype if model.dtype != torch.float32 else None
        for b in s["eval_batch_sizes"]:
            items = [videoqa.QAItem(i, f"v{i % len(pool)}", f"{QUESTION} {'and more ' * (i % 4)}".strip(), "")
                     for i in range(b)]
            visuals = [videoqa._Visual(pixel_values=pool[i % len(pool)]) for i in range(b)]
            t0 = time.perf_counter()
            batch = videoqa._collate(processor, items, visuals, cast, device.type == "cuda")
            collate_ms = (time.perf_counter() - t0) * 1000
            length = batch.inputs["input_ids"].shape[1]
            for mode in s["eval_decoding"]:
                def answer_batch(mode: str = mode) -> list[str]:
                    return videoqa._generate(engine, processor, batch.inputs, k, mode, min_new_tokens=k)
                try:
                    t0 = time.perf_counter()
                    answer_batch()
                    first_ms = (time.perf_counter() - t0) * 1000
                    r = clock.time(answer_batch, events=False, warmup=1 + 2 * (mode == "compiled"),
                                   repeats=max(2, s["repeats"] // 2))
                except torch.OutOfMemoryError as err:
                    rows.append({"llm": llm, "batch": b, "decoding": mode, "error": f"out of memory: {err}"[:300]})
                    _free(device)
                    continue
                row = {"llm": llm, "batch": b, "decoding": mode, "new_tokens": k, "prompt_tokens": length,
                       "collate_ms": round(collate_ms, 1), "first_call_s": round(first_ms / 1000, 2), **r,
                       "answers_per_s": round(b / (r["median_ms"] / 1000), 2)}
                rows.append(row)
                log(f"  eval {llm:14s} batch {b:3d} {mode:8s}: {r['median_ms']:9.1f} ms/batch  "
                    f"{row['answers_per_s']:7.2f} answers/s")
        if s["eval_e2e"] and _has("av"):
            try:
                e2e.append(_eval_e2e(s, engine, processor, llm, log))
            except Exception as err:
                e2e.append({"llm": llm, "error": f"{type(err).__name__}: {err}"[:300]})
                log(f"  eval run_videoqa {llm}: FAILED {type(err).__name__}: {err}")
        engine = model = processor = None  # freed before the next LLM
        _free(device)
    return {"rows": rows, "run_videoqa": e2e}


def _eval_e2e(s: dict, engine: Any, processor: Any, llm: str, log: Callable[[str], None]) -> dict:
    """`run_videoqa` over synthetic clip files: decoding, preprocessing and batching as `videopanda eval` runs
    them (the answers stop at EOS, so their length is the model's own)."""
    from .data.synth import generate
    from .eval.videoqa import read_qa, run_videoqa

    b = max(s["eval_batch_sizes"])
    with tempfile.TemporaryDirectory(prefix="vp-bench-") as tmp:
        root = Path(tmp)
        generate(root, n=2 * max(2, b // 4), seed=0, splits=(0.5, 0.0, 0.5), num_frames=s["frames"], size=128,
                 progress=False)
        items = read_qa(root / "test_q.json", root / "test_a.json")[: 2 * b]
        summary = run_videoqa(engine, processor, items, root / "videos", root / "pred.jsonl", dataset="synth",
                              batch_size=b, max_new_tokens=s["eval_new_tokens"], num_workers=2, progress=False)
    row = {"llm": llm, "batch": b, "questions": len(items), "videos": len({i.video_name for i in items}),
           "seconds": summary["seconds"], "answers_per_s": summary["answers_per_second"],
           "failed": summary["num_failed"]}
    log(f"  eval run_videoqa {llm}: {row['questions']} questions in {row['seconds']} s = {row['answers_per_s']} "
        "answers/s (decode included)")
    return row


# -- section: memory ---------------------------------------------------------------------------------------------------
def bench_memory(s: dict[str, Any], clock: Clock, device: Any, dtype: Any, log: Callable[[str], None],
                 models: Callable[[str], tuple]) -> dict:
    rows = []
    for llm in s["llm"]:
        engine, _, stab = models(llm)
        model = engine.model
        visual = _weights_mb(model.video_tower) + _weights_mb(model.video_projector)
        rows.append({"llm": llm, "stab": stab, "weights": _dtype_name(model.dtype),
                     "total_mb": _weights_mb(model), "visual_mb": round(visual, 1),
                     "llm_mb": _weights_mb(model.language_model)})
        log(f"  memory {llm}: {rows[-1]['total_mb']} MB of weights ({rows[-1]['weights']})")
        del engine, model
        _free(device)
    quantized = []
    if s["quant"] and "7b-random" in s["llm"] or s["quant"] and "tiny" in s["llm"]:
        llm = "7b-random" if "7b-random" in s["llm"] else "tiny"
        for kind in s["quant"]:
            try:
                quantized.append(_quantized_row(s, clock, device, dtype, llm, kind, log, models))
            except Exception as err:
                quantized.append({"llm": llm, "quantization": kind, "error": f"{type(err).__name__}: {err}"[:300]})
                log(f"  memory {llm} {kind}: FAILED {type(err).__name__}: {err}")
            _free(device)
    return {"rows": rows, "quantized": quantized}


def quantize_llm_in_place(model: Any, kind: str) -> int:
    """Replace the LLM's decoder Linear layers by bitsandbytes 8-bit or NF4 4-bit layers, quantizing the weights
    they already hold (what `Engine.load(..., quantization=...)` does while reading a checkpoint, for a model built with
    random weights). The STAB, projector and LM head are untouched. Returns the number of layers replaced."""
    if any(hasattr(m, "_fused_qkv_weight") or hasattr(m, "_fused_gate_up_weight") for m in model.modules()):
        # the fused 16-bit matrices would stay in memory and keep serving the forward: build with fuse_llm=False
        raise ValueError("quantize_llm_in_place needs an LLM without fused projections (fast/llm.py)")
    import bitsandbytes as bnb
    import torch
    from torch import nn

    from .runtime import quantization_config

    config = quantization_config(kind, model.dtype)
    decoder = model.language_model.model
    replaced = 0
    parents = [m for m in decoder.modules() if any(type(c) is nn.Linear for c in m.children())]
    for module in parents:  # holding only the parents lets each replaced layer's 16-bit weight be freed at once
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            w, device = child.weight.data, child.weight.device
            if kind == "4bit":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None,
                                      compute_dtype=config.bnb_4bit_compute_dtype, compress_statistics=True,
                                      quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                             module=q).to(device)
            else:
                q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, child.bias is not None,
                                        has_fp16_weights=False, threshold=6.0, device="meta")
                q.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False).to(device)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, child_name, q)
            replaced += 1
            del child, w
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return replaced


def _quantized_row(s: dict, clock: Clock, device: Any, dtype: Any, llm: str, kind: str,
                   log: Callable[[str], None], models: Callable[[str], tuple]) -> dict:
    engine, processor, _ = models(llm, fuse_llm=False)  # as `Engine.load(quantization=)`: bnb layers stay unfused
    model = engine.model
    layers = quantize_llm_in_place(model, kind)
    _free(device)
    row = {"llm": llm, "quantization": kind, "layers_quantized": layers, "total_mb": _weights_mb(model),
           "llm_mb": _weights_mb(model.language_model),
           "visual_mb": round(_weights_mb(model.video_tower) + _weights_mb(model.video_projector), 1)}
    videos = synthetic_videos(1, s["frames"], s["frame_size"], seed=100)
    inputs = dict(processor(videos=videos, text=processor.build_prompt(QUESTION)))
    n_prompt = inputs["input_ids"].shape[1]
    n = s["new_tokens"]
    e2e = clock.time(lambda: _generate_once(engine, processor, inputs, n_prompt, n, "dynamic"), events=False,
                     warmup=1, repeats=max(2, s["repeats"] // 2))
    row.update(decoding="dynamic", new_tokens=n, prompt_tokens=n_prompt, e2e_ms=e2e["median_ms"],
               peak_mem_mb=e2e["peak_mem_mb"])
    log(f"  memory {llm} {kind}: {row['total_mb']} MB of weights; e2e {row['e2e_ms']:.1f} ms for {n} tokens, "
        f"peak {row['peak_mem_mb']} MB")
    engine = model = None
    return row


# -- driver ------------------------------------------------------------------------------------------------------------
def _command_line(args: argparse.Namespace) -> str:
    argv = sys.argv
    if argv and "bench" in argv[1:]:
        return shlex.join(["videopanda", *argv[argv.index("bench"):]])
    flags = []  # called from Python: rebuild the equivalent command from the parsed flags
    for key, value in sorted(vars(args).items()):
        if key in ("func", "verbose", "command") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif key == "eval_e2e":
            continue
        else:
            flags += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    if not args.eval_e2e:
        flags.append("--no-eval-e2e")
    return shlex.join(["videopanda", "bench", *flags])


def run(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected sections and return (and write to --out) the results as one JSON-able dict."""
    import torch

    from .runtime import resolve_device, resolve_dtype

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    s = settings(args, device.type)
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    clock = Clock(device, s["warmup"], s["repeats"])
    started = time.time()
    result: dict[str, Any] = {"command": _command_line(args), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "load_average_at_start": _load_average(),
                              **environment(device), "dtype": _dtype_name(dtype),
                              "settings": {k: v for k, v in s.items() if k not in ("out", "quiet")},
                              "peak_mem_mb_is": "torch.cuda.max_memory_allocated" if device.type == "cuda"
                              else "the process's peak resident set size (VmHWM), everything loaded included",
                              "errors": []}
    built: dict[str, tuple] = {}

    def models(llm: str, fuse_llm: bool | None = None) -> tuple:
        """Each LLM is built once per section and dropped after it (so a GPU holds one large model at a time)."""
        if llm not in built:
            built.clear()
            _free(device)
            t0 = time.perf_counter()
            built[llm] = build_model(llm, device, dtype, fuse_llm=fuse_llm)
            log(f"  built {llm} in {time.perf_counter() - t0:.1f}s")
        return built.pop(llm)

    sections = {"stab": bench_stab, "vit": bench_vit, "generate": bench_generate, "eval": bench_eval,
                "memory": bench_memory}
    for name in [n for n in SECTIONS if n in s["sections"]]:
        log(f"[{name}]")
        t0 = time.perf_counter()
        fn = sections[name]
        try:
            extra = (models,) if name in ("generate", "eval", "memory") else ()
            with torch.no_grad():  # not set_grad_enabled(False): `bench` runs inside other programs (tests too)
                result[name] = fn(s, clock, device, dtype, log, *extra)
            result[name]["seconds"] = round(time.perf_counter() - t0, 1)
        except Exception as err:  # one broken section must not lose the others' numbers
            result["errors"].append({"section": name, "error": f"{type(err).__name__}: {err}",
                                     "traceback": traceback.format_exc(limit=6)})
            log(f"[{name}] FAILED: {type(err).__name__}: {err}")
        usable = _freed(device, result["errors"], log)
        result["seconds"] = round(time.time() - started, 1)
        result["load_average_at_end"] = _load_average()
        _write(args.out, result)  # after every section: a run cut short keeps what it measured
        if not usable:
            break
    if args.out:
        log(f"wrote {args.out}")
    return result


def _write(path: str | None, result: dict[str, Any]) -> None:
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Entry point of `videopanda bench`."""
    return run(args)


def main(argv: list[str] | None = None) -> int:
    """`python -m videopanda.bench ...`: the same flags as `videopanda bench`."""
    parser = argparse.ArgumentParser(prog="videopanda bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args)
    if not args.quiet:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
