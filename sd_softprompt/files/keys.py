"""The vocabulary of soft-prompt files: encoder keys, their real widths, the formats, and size limits.

Kept apart from the readers and writers so that both, and the in-memory type, share one table.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from ..families import FAMILIES

if TYPE_CHECKING:
    import torch

# Built from the family table: a new family's encoders and key set are known here without an edit.
ENCODER_KEYS = tuple(dict.fromkeys(e.key for f in FAMILIES.values() for e in f.encoders))
REAL_WIDTHS = {e.key: e.width for f in FAMILIES.values() for e in f.encoders}
UNASSIGNED = "*"
# The tools' own layouts, then targets named for a client: the layout that client's own code reads for every
# family it runs (scripts/check_clients.py checks them). comfyui: the native keys; invokeai: kohya's layout.
FORMATS = ("native", "diffusers", "a1111", "kohya", "onetrainer", "comfyui", "invokeai")
FORMAT_VERSION = "sd-softprompt/1"
MAX_VECTORS = 75


# Keys other tools use for the same encoders (diffusers' Flux script and OneTrainer write "t5").
KEY_ALIASES = {"t5": "t5xxl"}
KEY_ALIASES |= {"gemma": "gemma2_2b"}  # OneTrainer's Sana key
OUT_SUFFIX = "_out"  # OneTrainer's output-embedding vectors: not input embeddings, so not ours
# A width two encoders share (T5-XXL and Qwen3 8B: 4096) keeps the first family's key.
WIDTH_TO_KEY: dict[int, str] = {}
for _key, _width in REAL_WIDTHS.items():
    WIDTH_TO_KEY.setdefault(_width, _key)

# A file's encoder keys name its family only when they are exactly one family's: a t5xxl-only file could be
# Flux's or SD3's, and its family then comes from the pipeline it is loaded into (or its metadata).
# Key sets two families share (gemma2_2b: Sana and Lumina 2; t5xxl: Chroma and PixArt-Sigma) name neither.
_KEY_SETS = [frozenset(f.keys) for f in FAMILIES.values()]
FAMILY_BY_KEYS = {frozenset(f.keys): f.name for f in FAMILIES.values() if _KEY_SETS.count(frozenset(f.keys)) == 1}

UNDERSTOOD_LAYOUTS = (
    f"native/ComfyUI ({', '.join(ENCODER_KEYS[:4])}, ... one key per encoder), "
    "diffusers {token: tensor}, "
    "A1111 string_to_param, kohya emb_params, OneTrainer emp_params"
)
DIFFUSERS_FILE = "learned_embeds"

PathLike = str | os.PathLike


def default_tokens(n: int) -> list[str]:
    """Placeholder tokens ``[v1] .. [vN]``."""
    return [f"[v{i}]" for i in range(1, n + 1)]


class Storable(Protocol):
    """What the writers read of a soft prompt; files/softprompt.py's SoftPrompt is one. A protocol, so that the
    writers (below the type) never import it."""

    vectors: dict[str, torch.Tensor]
    tokens: list[str] | None
    metadata: dict[str, str]

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str | None: ...
