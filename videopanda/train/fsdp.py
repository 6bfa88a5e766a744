"""Fully sharded training (`videopanda train --fsdp` under torchrun): PyTorch FSDP2, full-state checkpoints.

`shard_model` wraps each decoder layer of the LLM in its own FSDP2 unit and the whole model in the root unit, which
keeps the STAB, the projector, the embeddings, the final norm and the LM head. On GPU the decoder layers hold bf16
parameters during compute and reduce gradients in fp32 (`MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)`); the root keeps fp32 parameters and computes under the recipe's bf16 autocast, exactly as a
non-FSDP run does (the STAB's BatchNorm keeps fp32 weights next to its fp32 running statistics). On CPU (gloo) there is
no mixed precision. Gradients are averaged over ranks as DDP does, so the recipe's global-token loss normalisation
holds unchanged, and `torch.nn.utils.clip_grad_norm_` on the sharded (DTensor) gradients clips by the global norm.

Checkpoints and the final model are gathered into full, unsharded state dicts on rank 0 (CPU), in the same format as a
non-FSDP run: model tensors by name, optimizer state by parameter index (`torch.optim.Optimizer.state_dict`). A
checkpoint written with --fsdp resumes without it and the other way round, and the final folder loads on one device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _fsdp2():
    try:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:
        raise ValueError(f"--fsdp needs PyTorch >= 2.6 (FSDP2, torch.distributed.fsdp.fully_shard); this is "
                         f"{torch.__version__}") from None
    return FSDPModule, MixedPrecisionPolicy, fully_shard


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The LLM's repeated blocks, by the class names in its `_no_split_modules` (LlamaDecoderLayer, ...)."""
    llm = model.language_model
    names = set(getattr(llm, "_no_split_modules", None) or ())
    return [m for m in llm.modules() if type(m).__name__ in names]


def shard_model(model: nn.Module, device: torch.device) -> None:
    """FSDP2 in place: one unit per decoder layer, the rest (STAB, projector, embeddings, head) in the root."""
    _, MixedPrecisionPolicy, fully_shard = _fsdp2()
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"--fsdp: found no decoder layers in {type(model.language_model).__name__} "
                         "(none of its _no_split_modules classes)")
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=bf16 if device.type == "cuda" else MixedPrecisionPolicy())
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    FSDPModule = _fsdp2()[0]
    return isinstance(model, FSDPModule)


def optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter name of each optimizer slot, in `Optimizer.state_dict` index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Name-keyed optimizer state (torch.distributed.checkpoint) -> index-keyed (`Optimizer.state_dict`)."""
    index = {n: i for i, n in enumerate(names)}
    groups, start = [], 0
    for group in state["param_groups"]:
        count = len(group["params"])
        groups.append({**group, "params": list(range(start, start + count))})
        start += count
    return {"state": {index[n]: s for n, s in state["state"].items() if n in index}, "param_groups": groups}


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Index-keyed optimizer state -> name-keyed, for `set_optimizer_state_dict`."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: s for i, s in state["state"].items()}, "param_groups": groups}


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """Unsharded CPU (model, optimizer) state dicts on rank 0, (None, None) elsewhere. Collective: every rank calls.

    The optimizer state comes back index-keyed, as `optimizer.state_dict()` of a non-FSDP run.
    """
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = dcp.get_model_state_dict(model, options=options)
    optim_state = None if optimizer is None else dcp.get_optimizer_state_dict(model, optimizer, options=options)
    if dist.get_rank() != 0:
        return None, None
    if optim_state is not None:
        names = optimizer_names(model, optimizer)
        if [n for g in optim_state["param_groups"] for n in g["params"]] != names:
            raise RuntimeError("--fsdp: the optimizer's parameter order does not match its full state dict")
        optim_state = _by_index(optim_state, names)
    return model_state, optim_state


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, torch.Tensor],
                    optim_state: dict[str, Any]) -> None:
    """Load full (unsharded) states, as `full_state` or a non-FSDP run saved them, into a sharded model. Every rank
    passes the full dicts (`torch.load(..., mmap=True)` keeps that cheap); each keeps its own shards."""
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, strict=False)
    dcp.set_model_state_dict(model, model_state, options=options)
    dcp.set_optimizer_state_dict(model, optimizer, _by_name(optim_state, optimizer_names(model, optimizer)),
                             options=options)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """FSDP2's no_sync: gradients of accumulation micro-batches stay unsharded until the last one."""
    model.set_requires_gradient_sync(sync)
