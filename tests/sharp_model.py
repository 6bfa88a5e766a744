"""A tiny model whose greedy answers depend on its input, for tests that compare decoding paths token by token.

It is the tiny variant with a 300-word vocabulary (synthetic prompts use ids under 300, with the video placeholder
299 inside the vocabulary) and weights drawn wider than the default init, so that greedy paths differ between
inputs. Imported as `from sharp_model import ...`, as tests/clips.py is.
"""

from __future__ import annotations

import torch

from videopanda import VideoPandaForCausalLM
from videopanda.configuration import variant_config

VID = 299


def sharp_tiny_model(seed: int = 0) -> VideoPandaForCausalLM:
    torch.manual_seed(seed)
    net = VideoPandaForCausalLM(variant_config("videopanda-tiny", text_config={"vocab_size": 300},
                                               video_token_index=VID)).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2 and not name.startswith("video_tower"):
                p.normal_(0, 0.3)
    return net
