"""Fused projections for a LLaMA decoder at inference: q/k/v as one matrix, gate/up as one matrix.

Why: a decode step is bound by reading the weights. Reading each layer's weights in two large matrix-vector
products (q|k|v, then gate|up) instead of five small ones keeps the GPU's memory system busier and halves the kernel
count. The separate weights become views of the fused matrix, so memory use and `state_dict()` stay the same, and
the arithmetic of each output element is unchanged (the same dot products, only launched together).

In a batch-1 decode step the fused blocks (and the LM head) read their weights through `decode_kernels.gemv`,
which reads memory faster than cuBLAS did for one row (docs/speed.md).

`compile_pointwise` goes one step further for long prompts: the prefill of a 2,200-token video prompt (times the
batch in evaluation) spends much of its time in unfused element-wise ops (RMSNorm in float32, rotary embedding,
SiLU * up), each a separate pass over large activations. Compiling just those small functions (inductor, batch and
length dynamic: one graph serves every prompt length) fuses each into one kernel, while the matrix products stay cuBLAS
calls and the KV cache stays outside compiled code.

The attention forward here mirrors the installed transformers' `LlamaAttention.forward`, read from its signature at
fuse time (the KV cache's keyword, `cache` or `past_key_values`). Both `fuse_projections` and `compile_pointwise`
then compare the model with the library's own forwards on a small probe (`verify_fused`, `fast_check.compare`)
before it serves anything, and on any disagreement put the library's forwards back with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import types
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import decode_kernels, fast_check
from .options import FastOptions

FUSABLE_ATTENTION = ("LlamaAttention",)  # forward below mirrors transformers' LlamaAttention.forward
FUSABLE_MLP = ("LlamaMLP",)
_MIRRORED = ("hidden_states", "position_embeddings", "attention_mask")  # then the cache, then **kwargs


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One [sum(out), in] weight (and bias) whose row blocks become the given layers' weights (as views)."""
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = [m.bias is not None for m in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError("cannot fuse linear layers where only some have a bias")
    bias = torch.cat([m.bias.detach() for m in linears]) if all(has_bias) else None
    start = 0
    for m in linears:
        n = m.out_features
        m._unfused_requires_grad = m.weight.requires_grad
        m.weight = nn.Parameter(weight[start:start + n], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[start:start + n], requires_grad=False)
        start += n
    return weight, bias


def _unfuse(linears: list[nn.Linear]) -> None:
    """Give each layer standalone weights again (copies of its views), so the fused matrix is freed."""
    for m in linears:
        grad = m.__dict__.pop("_unfused_requires_grad", True)
        m.weight = nn.Parameter(m.weight.detach().clone(), requires_grad=grad)
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=grad)


def _plain(*linears: nn.Module) -> bool:
    """Only plain float nn.Linear layers on one device (quantized layers keep their own kernels)."""
    return all(type(m) is nn.Linear and m.weight.is_floating_point() for m in linears) and \
        len({m.weight.device for m in linears}) == 1 and len({m.weight.dtype for m in linears}) == 1


@functools.cache
def _cache_argument(forward: Callable) -> str | None:
    """The keyword under which an attention block's `forward` takes the KV cache, read from its signature ("cache"
    in transformers 5.25, "past_key_values" in 5.20); None when the signature is not the one `_attention_forward`
    mirrors: (hidden_states, position_embeddings, attention_mask, the cache, **kwargs)."""
    params = list(inspect.signature(forward).parameters.values())[1:]
    names = [p.name for p in params]
    if len(params) == 5 and names[:3] == list(_MIRRORED) and names[3] in fast_check.CACHE_ARGUMENTS and \
            params[4].kind is inspect.Parameter.VAR_KEYWORD:
        return names[3]
    return None


@functools.cache
def _update_takes_kwargs() -> bool:
    """Whether `Cache.update` takes keyword arguments: transformers 5.25 hands the attention's kwargs on to it
    (`kwargs=kwargs`), which the layers of older releases ignore."""
    from transformers.cache_utils import Cache

    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(Cache.update).parameters.values())


def _attention_forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                       attention_mask: torch.Tensor | None = None, *args, **kwargs):
    """transformers' LlamaAttention.forward with the three input projections done as one, and the products of a
    one-row input (a batch-1 decode step) through `decode_kernels`. The KV cache comes under the keyword the
    installed library's forward names (`_cache_argument`), positionally, or under the other known name."""
    if len(args) > 1:
        raise TypeError(f"LlamaAttention.forward takes one positional argument after attention_mask, got {len(args)}")
    cache = args[0] if args else None
    for name in self._fused_cache_names:  # the library's keyword first
        found = kwargs.pop(name, None)
        cache = found if cache is None else cache
    lib = sys.modules[type(self).__module__]
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q, k, v = decode_kernels.linear(hidden_states, self._fused_qkv_weight, self._fused_qkv_bias, self._fused_gemv) \
        .split(self._fused_qkv_sizes, -1)
    q, k, v = (t.view(hidden_shape) for t in (q, k, v))  # [B, L, heads, D]
    cos, sin = position_embeddings
    # rotary embedding in the [B, L, heads, D] layout (cos/sin broadcast over heads), then the [B, heads, L, D] view:
    # the same numbers, but reads and writes stay contiguous (in the transposed layout the compiled rotary kernel
    # took 5.7 ms per layer at a batch of 32 video prompts)
    q, k = getattr(self, "_rope", lib.apply_rotary_pos_emb)(q, k, cos, sin, unsqueeze_dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx, **({"kwargs": kwargs} if self._fused_update_kwargs else {}))
    pads = _left_pads(attention_mask, q.shape[2]) if self.config._attn_implementation == "sdpa" else None
    if pads is not None:  # a left-padded prefill (batched generation): causal flash attention row by row
        out = _ragged_causal_attention(q, k, v, pads, self.scaling)
        return _project(self.o_proj, out.reshape(*input_shape, -1), self._fused_gemv), None
    attention = lib.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                          lib.eager_attention_forward)
    out, weights = attention(self, q, k, v, attention_mask, dropout=0.0 if not self.training else
                             self.attention_dropout, scaling=self.scaling, **kwargs)
    return _project(self.o_proj, out.reshape(*input_shape, -1).contiguous(), self._fused_gemv), weights


def _project(layer: nn.Module, x: torch.Tensor, gemv: str) -> torch.Tensor:
    """`layer(x)`, through `decode_kernels.linear` for a plain nn.Linear (a one-row input then reads the weights
    with the matrix-vector kernel, as `gemv` allows); quantized and other layers keep their own forward."""
    if type(layer) is nn.Linear:
        return decode_kernels.linear(x, layer.weight, layer.bias, gemv)
    return layer(x)


def _head_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The LM head's forward: the logits of a decode step through `decode_kernels.linear` too."""
    return decode_kernels.linear(x, self.weight, self.bias, self._fused_gemv)


_NO_PADS = object()


def _left_pads(mask: torch.Tensor | None, q_len: int) -> list[int] | None:
    """Each row's left padding when `mask` is the boolean [B, 1, L, kv] mask of a left-padded prefill from position 0
    (what transformers builds for batched `generate`): row b may see exactly keys pad_b..q for query q. None for
    anything else (no mask, decode steps, a prefill after cached tokens, other mask kinds), which keeps the library's
    attention. Read once per forward (one small host copy) and remembered on the mask, which every layer shares."""
    if mask is None or q_len < 2 or mask.dtype != torch.bool or mask.ndim != 4 or mask.shape[1] != 1 or \
            mask.shape[2] != q_len or torch.compiler.is_compiling():
        return None
    cached = getattr(mask, "_videopanda_pads", None)
    if cached is not None:
        return None if cached is _NO_PADS else cached
    first = mask[:, 0, -1].int().argmax(-1)  # [B]: each row's first key (the last query sees them all)
    pos = torch.arange(mask.shape[-1], device=mask.device)
    real = pos[:q_len, None] >= first[:, None, None]  # [B, L, 1]: the queries that are real tokens
    want = (pos <= pos[:q_len, None]) & (pos >= first[:, None, None])  # [B, L, kv]: causal from pad_b on
    ok, *pads = torch.cat([((mask[:, 0] & real) == want).all().view(1), first]).tolist()  # one small copy
    causal = bool(ok) and any(pads)  # the real rows follow the pattern (padding rows may hold anything)
    mask._videopanda_pads = pads if causal else _NO_PADS
    return pads if causal else None


def _ragged_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pads: list[int],
                             scaling: float) -> torch.Tensor:
    """Attention of a left-padded prefill without the padding mask: each row's real tokens (pads[b]:) attend
    causally to that row's real keys, with SDPA's `is_causal` (flash / cuDNN kernels, which take no mask). With a mask
    the kernel must compute every query-key pair; at a batch of 32 video prompts that was 15% of the prefill.

    q: [B, H, L, D]; k, v: [B, H_kv, >= L, D] (a static cache returns its whole buffer; only the first L positions
    are this prompt's). Returns [B, L, H, D] like transformers' attention functions; padding rows are zero (no real
    token attends to them).
    """
    B, H, L, D = q.shape
    out = q.new_zeros(B, L, H, D)
    gqa = H != k.shape[1]
    for b, p in enumerate(pads):
        o = F.scaled_dot_product_attention(q[b:b + 1, :, p:], k[b:b + 1, :, p:L], v[b:b + 1, :, p:L],
                                           is_causal=True, scale=scaling, enable_gqa=gqa)
        out[b, p:] = o[0].transpose(0, 1)
    return out


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = decode_kernels.linear(x, self._fused_gate_up_weight, self._fused_gate_up_bias, self._fused_gemv) \
        .chunk(2, -1)
    act_mul = getattr(self, "_act_mul", None)
    return _project(self.down_proj, act_mul(gate, up) if act_mul is not None else self.act_fn(gate) * up,
                    self._fused_gemv)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm.forward, as a plain function (compiled once, shared by every norm)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    # a plain function called from a bound method: torch 2.11's dynamo cannot inline a compiled unbound method that
    # MethodType re-binds inside the compiled decode step
    return self._rms_norm_fn(hidden_states, self.weight, self.variance_epsilon)


class CompiledOps:
    """The compiled element-wise functions of `compile_pointwise`, one per function, shared by every block and
    model that is given this object. The caller owns it (e.g. one per loaded model), so compiled graphs live as long
    as the caller keeps them, not for the whole process.

    Each function is compiled with automatic dynamic shapes: the first call compiles for its exact shapes, the first
    call with another batch size or prompt length recompiles once with just those sizes symbolic, and that graph then
    serves every length (a 1-token decode step gets its own). Not `dynamic=True`: that makes the head count and width
    symbolic too, and the index arithmetic of the rotary kernel (divisions by runtime sizes) made it 5x slower than
    its memory traffic."""

    def __init__(self) -> None:
        self._fns: dict[object, Callable] = {}

    def __len__(self) -> int:
        return len(self._fns)

    def get(self, fn: Callable) -> Callable:
        """`fn` compiled (once per object)."""
        if fn not in self._fns:
            self._fns[fn] = torch.compile(_as_function(fn))
        return self._fns[fn]

    def clear(self) -> None:
        self._fns.clear()


def _as_function(fn: Callable) -> Callable:
    """`fn`, or a plain function calling it where it is an nn.Module: with the `kernels` package installed,
    transformers turns `apply_rotary_pos_emb` into a module, and a compiled module set on a block would become a
    submodule of every block (one object that dynamo then meets under many names)."""
    if not isinstance(fn, nn.Module):
        return fn

    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    return call


def compile_pointwise(model: nn.Module, compiled: CompiledOps | None = None) -> int:
    """Compile the element-wise parts of every fused LLaMA block of `model` (after `fuse_projections`): RMSNorm,
    rotary embedding, SiLU(gate) * up. Same operations in the same dtypes, one kernel each. Returns how many
    modules changed. `compiled`: the caller's cache of compiled functions (a fresh one when omitted). The first call
    of each new shape kind compiles (seconds); compiled decode steps trace through.
    Checked like `fuse_projections` (`verify_fused`, the functions run eagerly): if the model then differs from the
    library's, every fast path is undone with a warning and it returns 0.
    """
    if _turned_off(model):
        return 0
    compiled = compiled if compiled is not None else CompiledOps()
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name == "LlamaRMSNorm" and not hasattr(module, "_rms_norm_fn"):
            module._rms_norm_fn = compiled.get(_rms_norm)
            _patch(module, _rms_norm_forward)
            changed += 1
        elif hasattr(module, "_fused_qkv_weight") and not hasattr(module, "_rope"):
            module._rope = compiled.get(sys.modules[type(module).__module__].apply_rotary_pos_emb)
            changed += 1
        elif hasattr(module, "_fused_gate_up_weight") and not hasattr(module, "_act_mul") and \
                getattr(module.config, "hidden_act", None) == "silu":
            module._act_mul = compiled.get(_silu_mul)
            changed += 1
    fused = any(hasattr(m, "_fused_qkv_weight") or hasattr(m, "_fused_gate_up_weight") for m in model.modules())
    what = "compiled LLM pointwise ops" + (" and fused projections" if fused else "")
    return changed if not changed or verify_fused(model, what) else 0


def _attention_keyword(module: nn.Module) -> str | None:
    """The cache keyword when `_attention_forward` can stand in for this block's forward (its signature and the
    library functions it calls are the ones mirrored), else None."""
    lib = sys.modules[type(module).__module__]
    if not all(hasattr(lib, n) for n in ("apply_rotary_pos_emb", "ALL_ATTENTION_FUNCTIONS", "eager_attention_forward")):
        return None
    return _cache_argument(type(module).forward)


def fuse_projections(model: nn.Module, options: FastOptions = FastOptions()) -> int:
    """Fuse q/k/v and gate/up in every LLaMA attention and MLP block of `model`, in place; returns how many blocks
    were fused. Blocks of other architectures and quantized layers are left alone, and so are attention blocks whose
    forward no longer has the signature mirrored here (with a warning). Inference only: the fused weights do not
    require gradients. `options.gemv` picks the form of the batch-1 decode-step products (`decode_kernels.linear`).

    The fused model is then compared with the library's forwards on a small probe (`verify_fused`); if they differ,
    the fusion is undone with a warning and it returns 0. The outcome is kept as `model.fused_llm_check`."""
    if _turned_off(model):
        return 0
    fused = 0
    unmirrored: set[type] = set()
    for module in model.modules():
        name = type(module).__name__
        if name in FUSABLE_ATTENTION and not hasattr(module, "_fused_qkv_weight"):
            parts = [module.q_proj, module.k_proj, module.v_proj]
            if not _plain(*parts):
                continue
            keyword = _attention_keyword(module)
            if keyword is None:
                unmirrored.add(type(module))
                continue
            module._fused_cache_names = (keyword, *(n for n in fast_check.CACHE_ARGUMENTS if n != keyword))
            module._fused_gemv = options.gemv
            module._fused_update_kwargs = _update_takes_kwargs()
            module._fused_qkv_sizes = [m.out_features for m in parts]
            module._fused_qkv_weight, module._fused_qkv_bias = _fuse(parts)
            _patch(module, _attention_forward)
            fused += 1
        elif name in FUSABLE_MLP and not hasattr(module, "_fused_gate_up_weight"):
            parts = [module.gate_proj, module.up_proj]
            if not _plain(*parts) or parts[0].out_features != parts[1].out_features:
                continue
            module._fused_gate_up_weight, module._fused_gate_up_bias = _fuse(parts)
            module._fused_gemv = options.gemv
            _patch(module, _mlp_forward)
            fused += 1
    for cls in unmirrored:
        warnings.warn(f"fused LLM projections: {cls.__module__}.{cls.__name__}.forward"
                      f"{inspect.signature(cls.forward)} is not the signature mirrored here; those attention blocks "
                      "stay plain", stacklevel=2)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if fused and type(head) is nn.Linear and "forward" not in head.__dict__:  # the logits of a decode step too
        head._fused_gemv = options.gemv
        _patch(head, _head_forward)
    return fused if not fused or verify_fused(model, "fused LLM projections") else 0


# -- the check, and undoing ------------------------------------------------------------------------------------------
_PATCHED = "_videopanda_patched"  # marks a module whose `forward` this file replaced
_FAST_ATTRIBUTES = ("_fused_qkv_sizes", "_fused_qkv_weight", "_fused_qkv_bias", "_fused_cache_names",
                    "_fused_update_kwargs", "_fused_gate_up_weight", "_fused_gate_up_bias", "_fused_gemv", "_rope",
                    "_act_mul", "_rms_norm_fn", _PATCHED)


def _patch(module: nn.Module, forward: Callable) -> None:
    module.forward = types.MethodType(forward, module)
    setattr(module, _PATCHED, True)


@contextlib.contextmanager
def _plain_forwards(model: nn.Module) -> Iterator[None]:
    """The library's forwards for a while: the replaced `forward`s set aside (the weights are the same tensors)."""
    saved = [(m, m.__dict__.pop("forward")) for m in model.modules()
             if m.__dict__.get(_PATCHED) and "forward" in m.__dict__]
    try:
        yield
    finally:
        for m, forward in saved:
            m.forward = forward


def unfuse(model: nn.Module) -> int:
    """Undo `fuse_projections` and `compile_pointwise` on `model`: standalone q/k/v and gate/up weights (the fused
    matrices are freed) and the library's forwards again. Returns how many modules changed."""
    changed = 0
    for module in model.modules():
        state = module.__dict__
        if "_fused_qkv_weight" in state:
            _unfuse([module.q_proj, module.k_proj, module.v_proj])
        if "_fused_gate_up_weight" in state:
            _unfuse([module.gate_proj, module.up_proj])
        if state.get(_PATCHED):
            state.pop("forward", None)
        found = [a for a in _FAST_ATTRIBUTES if a in state or a in module._modules]
        for a in found:
            delattr(module, a)
        changed += bool(found)
    return changed


def _turned_off(model: nn.Module) -> bool:
    """A model whose check failed keeps the plain path: it is not fused (nor checked, nor warned about) again."""
    check = getattr(model, "fused_llm_check", None)
    return check is not None and not check.ok


def verify_fused(model: nn.Module, what: str = "fused LLM projections") -> bool:
    """Compare `model` (its fast paths on) with the library's plain forwards on a small probe (`fast_check.compare`:
    prefill and decode steps, dynamic and static cache, a left-padded batch). If they disagree, or the fast path
    raises, undo every fast path (`unfuse`) and warn once. Returns whether the fast path stayed on; the outcome
    (`fast_check.Check`) is kept as `model.fused_llm_check` for callers to report."""
    check = fast_check.compare(model, lambda: _plain_forwards(model))
    model.fused_llm_check = check
    if not check.ok:
        unfuse(model)
        warnings.warn(f"{what} disabled: {check.reason}; using the plain path", stacklevel=3)
    return check.ok
