"""Video-Panda over any causal LM: STAB + mlp2x_gelu projector + a transformers `AutoModelForCausalLM`.

The processor expands each `<video>` of the prompt into exactly as many placeholder ids (`config.video_token_index`)
as the video has visual tokens. Here the placeholder embeddings are replaced by the projected STAB tokens with one
`masked_scatter` for the whole batch (as transformers' llava models do), replacing the reference's per-sample
splice loop. Labels at placeholder positions are ignored in the loss.

Shape legend: B batch, T frames, S canvas side, N tokens, D LLM width.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from ..configuration import VideoPandaConfig
from .stab import STAB

IGNORE_INDEX = -100


class VideoPandaPreTrainedModel(PreTrainedModel):
    config: VideoPandaConfig
    config_class = VideoPandaConfig
    base_model_prefix = "videopanda"
    main_input_name = "input_ids"
    input_modalities = ("video", "image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["STAB", "LlamaDecoderLayer", "Qwen2DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]

    def _init_weights(self, module: nn.Module) -> None:
        """Fresh STAB/projector modules get their constructors' initialisation, zero-inits included (they matter:
        LSTE and GSTRA start as identity residuals). The wrapped LLM keeps its own `_init_weights`."""
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.BatchNorm3d)) or (
                type(module).__module__.startswith("videopanda.") and hasattr(module, "reset_parameters")):
            module.reset_parameters()
        for name in getattr(module, "zero_init_names", ()):
            nn.init.zeros_(getattr(module, name))


class VideoPandaForCausalLM(VideoPandaPreTrainedModel, GenerationMixin):
    """Video-Panda: visual tokens from the STAB, spliced into the prompt of a causal LM.

    Args:
        config: the model config.
        language_model: an already built causal LM to wrap (e.g. one loaded from GGUF); built from
            `config.text_config` when omitted.
    """

    _checkpoint_conversion_mapping: dict[str, str] = {}

    def __init__(self, config: VideoPandaConfig, language_model: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.video_tower = STAB.from_config(config)
        D = config.llm_hidden_size
        self.video_projector = nn.Sequential(nn.Linear(config.stab_hidden_size, D), nn.GELU(), nn.Linear(D, D))
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        tied = getattr(self.language_model, "_tied_weights_keys", None) or {}
        if config.tie_word_embeddings and isinstance(tied, dict):
            self._tied_weights_keys = {f"language_model.{k}": f"language_model.{v}" for k, v in tied.items()}
        self.generation_config = self.language_model.generation_config
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args: Any, **kwargs: Any):
        """Load "videopanda-default", our own checkpoints, official Video-Panda folders (EVE-style config.json) or a
        hub id of either (`subfolder`, `revision`, `cache_dir`, `token`, `local_files_only` as in transformers).
        Strict: a checkpoint that does not cover the model raises `weights.CheckpointError` naming the keys."""
        from ..weights import load_model

        if model_args:
            raise TypeError("VideoPandaForCausalLM.from_pretrained takes no positional model arguments")
        return load_model(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *args: Any, state_dict: dict | None = None,
                        **kwargs: Any) -> None:
        """transformers' `save_pretrained`, then a check that the files hold exactly our tensor names (tied copies
        aside), so that what is saved reloads with these weights."""
        from ..weights import check_saved_keys

        expected = _saved_names(state_dict if state_dict is not None else self.state_dict())
        super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        if kwargs.get("is_main_process", True):
            check_saved_keys(save_directory, *expected)

    @property
    def cache_keyword(self) -> str:
        """The keyword under which the wrapped LLM's forward (and `generate`) take a KV cache."""
        return cache_keyword(self.language_model)

    # -- embeddings plumbing, so generate / resize / peft see the LLM's ------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # -- vision -------------------------------------------------------------------------------------------------------
    def encode_video_flat(self, pixel_values: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Projected visual tokens of a batch, flat in LLM order: ([N_total, D], tokens per video).

        `pixel_values` is [B, T, 4, S, S], or a list of [T_b, 4, S, S] when frame counts differ (images mixed with
        videos); a list is run as one STAB batch per distinct T. The inference form of this encode (fused STAB,
        CUDA graphs, no host sync) is `videopanda.fast.FastEncoder`.
        """
        if isinstance(pixel_values, torch.Tensor):
            if pixel_values.ndim == 4:  # [B, 4, S, S] images
                pixel_values = pixel_values[:, None]
            _check_pixel_values(pixel_values)
            weight = self.video_projector[0].weight  # processors give float32; a bf16 model computes in bf16
            out = self.video_tower(pixel_values.to(device=weight.device, dtype=weight.dtype))
            per_video = out.tokens_per_frame.view(pixel_values.shape[0], -1).sum(1).tolist()
            return self.video_projector(out.tokens), per_video
        return encode_by_frame_count(pixel_values, self.encode_video_flat)

    def encode_video(self, pixel_values: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Projected visual tokens in the exact order they enter the LLM.

        Args:
            pixel_values: [B, T, 4, S, S] from `VideoPandaProcessor` ([B, 4, S, S] for images, or a list of
                [T_b, 4, S, S]).

        Returns:
            [B, N, D] with N = sum over frames of 1 + h*(w+1); a list of [N_b, D] when videos differ in N.
        """
        tokens, per_video = self.encode_video_flat(pixel_values)
        parts = list(tokens.split(per_video))
        return torch.stack(parts) if len(set(per_video)) == 1 else parts

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                     visual: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with every placeholder replaced by its visual token. [B, N] -> [B, N, D].

        `visual`: the visual tokens already encoded ([N_total, D], as `encode_video_flat` returns them), instead of
        `pixel_values`."""
        placeholder = input_ids == self.config.video_token_index
        embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        if pixel_values is None and visual is None:
            if input_ids.shape[1] > 1 and placeholder.any():  # prefill only: decode steps stay sync-free
                raise ValueError("the prompt holds video placeholder tokens but no pixel_values were given")
            return embeds
        if visual is None:
            visual, _ = self.encode_video_flat(pixel_values)
        n_slots = int(placeholder.sum())
        if n_slots != visual.shape[0]:
            raise ValueError(f"the prompt holds {n_slots} video placeholder tokens but the videos give "
                             f"{visual.shape[0]} visual tokens; build inputs with VideoPandaProcessor, which expands "
                             "each <video> to the right count")
        return embeds.masked_scatter(placeholder[..., None], visual.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ):
        """Causal-LM forward; returns the wrapped LM's `CausalLMOutputWithPast` (loss when labels are given).

        Args:
            input_ids: [B, N] with placeholder ids where visual tokens go.
            pixel_values: [B, T, 4, S, S] or None (text only, or decode steps after the prefill).
            labels: [B, N]; placeholder positions are ignored whatever they hold.
            kwargs: passed to the LLM as they come, the KV cache among them (named `cache` or `past_key_values`,
                whichever the installed transformers uses: see `cache_keyword`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
            if labels is not None:
                labels = labels.masked_fill(input_ids == self.config.video_token_index, IGNORE_INDEX)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, labels=labels,
            use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)


def encode_by_frame_count(videos: list[torch.Tensor],
                          encode: Callable[[torch.Tensor], tuple[torch.Tensor, list[int]]]
                          ) -> tuple[torch.Tensor, list[int]]:
    """A list of [T_b, 4, S, S] videos encoded as one batch per distinct T (`encode` takes [B, T, 4, S, S] and gives
    (flat tokens, tokens per video)); the result is flat in the list's order, as for one batch."""
    by_length: dict[int, list[int]] = {}
    for i, video in enumerate(videos):
        by_length.setdefault(video.shape[0], []).append(i)
    parts: list[torch.Tensor] = [None] * len(videos)  # type: ignore[list-item]
    for idx in by_length.values():
        tokens, per_video = encode(torch.stack([videos[i] for i in idx]))
        for i, part in zip(idx, tokens.split(per_video)):
            parts[i] = part
    return torch.cat(parts), [p.shape[0] for p in parts]


def cache_keyword(lm: nn.Module) -> str:
    """"cache" (newer transformers) or "past_key_values" (older): read from the forward's signature, so a renamed
    argument is followed instead of silently dropped into `**kwargs`."""
    params = inspect.signature(type(lm).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _saved_names(state: dict[str, torch.Tensor]) -> tuple[set[str], set[str]]:
    """(every name, names that may be left out as copies of another tensor: tied weights share storage)."""
    first: dict[tuple, str] = {}
    copies = set()
    for name, tensor in state.items():
        key = (tensor.device.type, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)) \
            if tensor.device.type != "meta" else (name,)
        if first.setdefault(key, name) != name:
            copies.update({name, first[key]})
    return set(state), copies


def _check_pixel_values(pixel_values: torch.Tensor) -> None:
    if pixel_values.ndim != 5 or pixel_values.shape[2] != 4:
        raise ValueError(f"pixel_values must be [B, T, 4, S, S] (RGB + valid-pixel mask), "
                         f"got {tuple(pixel_values.shape)}")
