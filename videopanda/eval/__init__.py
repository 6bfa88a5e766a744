"""Evaluation: VideoQA inference over MSVD/MSRVTT/TGIF/ActivityNet-style question files (sharded under torchrun),
judge-free scores, LLM judges (OpenAI-compatible API or local), the Video-ChatGPT benchmark and reports.

Names are imported lazily (PEP 562), as in `videopanda/__init__.py`: the CLI registers the eval sub-commands
(`commands.py`) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATASETS": ".videoqa",
    "QAItem": ".videoqa",
    "find_video": ".videoqa",
    "merge_and_score": ".videoqa",
    "read_jsonl": ".videoqa",
    "read_qa": ".videoqa",
    "run_videoqa": ".videoqa",
    "contains_match": ".metrics",
    "exact_match": ".metrics",
    "normalize": ".metrics",
    "summarize": ".metrics",
    "token_f1": ".metrics",
    "Judge": ".judges",
    "LocalJudge": ".judges",
    "OpenAIJudge": ".judges",
    "Rubric": ".judges",
    "aggregate": ".judges",
    "judge_qa": ".judges",
    "predict_vcgbench": ".vcgbench",
    "read_vcg": ".vcgbench",
    "score_vcgbench": ".vcgbench",
    "sharded_videoqa": ".sharding",
    "write_report": ".report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videopanda.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return __all__
