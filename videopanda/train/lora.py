"""LoRA on the wrapped LLM through peft (training side; `weights.apply_lora_deltas` applies saved deltas).

The default model ships its LoRA as plain tensors (`lora.safetensors`: for each adapted Linear, `NAME.lora_A`
[r, in] and `NAME.lora_B` [out, r] with the scaling folded into B), so inference needs no peft.
"""

from __future__ import annotations

import torch
from torch import nn

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_lora(model: nn.Module, r: int, alpha: int, targets: list[str] | None = None) -> None:
    """Wrap `model.language_model` with peft LoRA adapters (only they train in the LLM)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or TARGETS, lora_dropout=0.0, bias="none")
    model.language_model = get_peft_model(model.language_model, config)


def _lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            # "language_model.base_model.model.model.layers.0.self_attn.q_proj" -> "language_model.model.layers..."
            yield name.replace("base_model.model.", ""), module


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors keyed by the plain (un-peft'ed) Linear name, scaling folded into B."""
    out = {}
    for name, module in _lora_layers(model):
        a = module.lora_A["default"].weight.detach().float().cpu()
        b = module.lora_B["default"].weight.detach().float().cpu() * module.scaling["default"]
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a.contiguous(), b.contiguous()
    return out


def stack_lora(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One set of LoRA tensors whose deltas are the sums of two sets' (ranks add): B_old A_old + B_new A_new ==
    [B_old, B_new] [A_old; A_new]. Used when training continues from a model whose LoRA deltas were already merged
    (the bundled default), so the shipped file keeps the earlier adaptation as well as the new one."""
    out = dict(old)
    for key, value in new.items():
        if not key.endswith(".lora_A"):
            continue
        name = key[: -len(".lora_A")]
        a, b = value.float(), new[f"{name}.lora_B"].float()
        if key in old:
            a = torch.cat([old[key].float(), a], 0)
            b = torch.cat([old[f"{name}.lora_B"].float(), b], 1)
        out[key], out[f"{name}.lora_B"] = a.contiguous(), b.contiguous()
    return out


def merge_lora(model: nn.Module) -> None:
    """Fold peft adapters into the LLM weights and drop peft (no-op without LoRA)."""
    if not type(model.language_model).__module__.startswith("peft."):  # no adapters: peft need not be installed
        return
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        model.language_model = model.language_model.merge_and_unload()
