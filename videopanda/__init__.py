"""videopanda: Video-Panda (CVPR 2025), an encoder-free video-language model. Fast, faithful and practical.

Public names are imported lazily (PEP 562), so the command-line tool starts fast. `import videopanda` registers the
model type with transformers' Auto classes (`videopanda.auto`), which imports transformers' configuration and model
base classes (not torch models or kernels).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": ".engine",
    "STAB": ".modeling.stab",
    "VARIANTS": ".configuration",
    "VideoDecodeError": ".video",
    "VideoPandaConfig": ".configuration",
    "VideoPandaForCausalLM": ".modeling.videopanda",
    "VideoPandaProcessor": ".processing",
    "load_image": ".video",
    "load_video": ".video",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


from .auto import register as _register  # noqa: E402

_register()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videopanda' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return __all__
