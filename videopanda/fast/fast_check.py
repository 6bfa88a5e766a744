"""The load-time check of the LLM fast paths (`fused_llm`): the patched model against the library's own forwards.

Why: `fused_llm` replaces transformers' LLaMA forwards with its own copies (fused projections, the ragged prefill,
compiled element-wise ops). A transformers release that renames an argument or changes what a block computes would
make those copies silently wrong (a KV cache passed under a new name and never filled, say). So before the copies
serve anything, `compare` runs the model both ways on a small probe, in the installed transformers and on the model's
own device and dtype: a short prefill and a few decode steps through a DynamicCache and a StaticCache (the static and
compiled decoding modes), at batch 1 (one-row decode steps) and as a left-padded batch of 2 (the ragged-attention
prefill), see `PROBES`. Logits must agree within the dtype's rounding and the cache must grow alike.

It costs 18 forward passes of a few tokens (3 probes x 3 steps, both ways; about 0.5 s for a 7B in bfloat16 on an
H100, where eager steps are bound by kernel launches), once per model. Compiled functions run eagerly during the
probe (no compilation): it checks the copied code, not the compiler.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

CACHE_ARGUMENTS = ("cache", "past_key_values")  # the KV cache's keyword: newer transformers (5.25), older (5.20)

# the relative RMS difference of the logits allowed (||fused - plain|| / ||plain|| over a step's real positions). The
# fused blocks compute the same dot products in another order (other kernels), so 16-bit results differ by rounding,
# which grows with depth: on a 7B-shaped random LLaMA on an H100, rounding alone gave 0.042 in bfloat16, 0.0055 in
# float16 and 1e-5 in float32, while real faults (rotary embedding skipped in one layer or on decode steps only,
# a padded prefill attending to its padding, attention output halved) gave 0.66 to 1.1.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 0.05, torch.bfloat16: 0.2}

PROMPT, STEPS, PAD = 5, 2, 2  # prefill length (the padded row holds PAD padding tokens of it), decode steps
# (cache, batch): both caches, one-row decode steps (the static cache's lean greedy loop), and the ragged prefill
# with both caches (a static cache hands attention its whole buffer)
PROBES = (("DynamicCache", 2), ("StaticCache", 1), ("StaticCache", 2))


@dataclass(frozen=True)
class Check:
    """The outcome of `compare`: `ok`, or `reason` for turning the fast path off; `diff` is the largest relative
    RMS logit difference seen (see `TOLERANCE`)."""

    ok: bool
    reason: str = ""
    diff: float = 0.0


def probe_target(model: nn.Module) -> tuple[nn.Module, str]:
    """The outermost module of `model` whose forward takes `inputs_embeds` and a KV cache, and the cache's keyword
    (read from its signature, as the installed transformers names it)."""
    for module in model.modules():
        params = inspect.signature(type(module).forward).parameters
        name = next((n for n in CACHE_ARGUMENTS if n in params), None)
        if name is not None and "inputs_embeds" in params and hasattr(module, "get_input_embeddings"):
            return module, name
    raise ValueError(f"{type(model).__name__} has no module whose forward takes inputs_embeds and a KV cache")


def _make_cache(kind: str, config, length: int):
    import transformers

    if kind == "StaticCache":
        return transformers.StaticCache(config=config, max_cache_len=length)
    return transformers.DynamicCache(config=config)


def _run(target: nn.Module, keyword: str, kind: str, embeds: torch.Tensor, mask: torch.Tensor
         ) -> list[tuple[torch.Tensor, int]]:
    """(logits at the real positions, cache length) after the prefill and after each decode step. Positions follow
    the mask as `generate` sets them."""
    config = target.config.get_text_config(decoder=True)
    cache = _make_cache(kind, config, embeds.shape[1])
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = []
    for a, b in [(0, PROMPT), *((i, i + 1) for i in range(PROMPT, PROMPT + STEPS))]:
        result = target(inputs_embeds=embeds[:, a:b], attention_mask=mask[:, :b], position_ids=position[:, a:b],
                        use_cache=True, **{keyword: cache})
        logits = result.logits if getattr(result, "logits", None) is not None else result.last_hidden_state
        out.append((logits[mask[:, a:b].bool()].float(), int(cache.get_seq_length())))
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def compare(model: nn.Module, plain: Callable[[], contextlib.AbstractContextManager]) -> Check:
    """Run the probes through `model` as it is and inside `plain()` (which restores the library's forwards); compare.

    The plain run failing is a failed check too: then nothing shows the fast path is right."""
    import transformers

    try:
        target, keyword = probe_target(model)
    except ValueError as e:
        return Check(False, f"the check could not run: {e}")
    embedding = target.get_input_embeddings()
    weight = next(p for p in target.parameters() if p.is_floating_point())
    tolerance = TOLERANCE.get(weight.dtype, 5e-2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(embedding.num_embeddings, (2, PROMPT + STEPS), generator=g).to(embedding.weight.device)
    mask = torch.ones_like(ids)
    mask[0, :PAD] = 0
    library = f"transformers {transformers.__version__}'s forwards"
    training = target.training
    target.eval()
    worst = 0.0
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            embeds = embedding(ids)
            for kind, batch in PROBES:
                rows = slice(2 - batch, 2)  # batch 1: the unpadded row
                case = f"{kind}, batch {batch}" + (" left-padded" if batch > 1 else "")
                try:
                    with plain():
                        want = _run(target, keyword, kind, embeds[rows], mask[rows])
                except Exception as e:  # any failure: the check could not run
                    return Check(False, f"the check could not run ({case}): the plain forward raised "
                                        f"{_first_line(e)}")
                try:
                    got = _run(target, keyword, kind, embeds[rows], mask[rows])
                except Exception as e:  # the fast path failing is what the check is for
                    return Check(False, f"the fast forward raised {_first_line(e)} ({case})", worst)
                for step, ((a, n_a), (b, n_b)) in enumerate(zip(got, want)):
                    where = f"{case}, " + ("prefill" if step == 0 else f"decode step {step}")
                    if n_a != n_b:
                        return Check(False, f"the KV cache holds {n_a} tokens where {library} leave {n_b} "
                                            f"({where})", worst)
                    if not torch.equal(a.isfinite(), b.isfinite()):
                        return Check(False, f"non-finite logits where {library} give finite ones ({where})", worst)
                    finite = b.isfinite()
                    diff = float((a[finite] - b[finite]).norm()) / max(float(b[finite].norm()), 1e-12) \
                        if finite.any() else 0.0
                    worst = max(worst, diff)
                    if not diff <= tolerance:
                        return Check(False, f"their logits differ from {library} (relative RMS difference "
                                            f"{diff:.3g}, {tolerance:g} allowed in {weight.dtype}; {where})", worst)
    finally:
        target.train(training)
    return Check(True, "", worst)
