"""The vocabulary of soft-prompt files: encoder keys, their real widths, the formats, and size limits.

Kept apart from the readers and writers so that both, and the in-memory type, share one table.
"""

from __future__ import annotations

import os

from ..families import FAMILIES

# Built from the family table: a new family's encoders and key set are known here without an edit.
ENCODER_KEYS = tuple(dict.fromkeys(e.key for f in FAMILIES.values() for e in f.encoders))
REAL_WIDTHS = {e.key: e.width for f in FAMILIES.values() for e in f.encoders}
UNASSIGNED = "*"
FORMATS = ("native", "diffusers", "a1111", "kohya", "onetrainer")
FORMAT_VERSION = "sd-softprompt/1"
MAX_VECTORS = 75


# Keys other tools use for the same encoders (diffusers' Flux script and OneTrainer write "t5").
KEY_ALIASES = {"t5": "t5xxl"}
OUT_SUFFIX = "_out"  # OneTrainer's output-embedding vectors: not input embeddings, so not ours
WIDTH_TO_KEY: dict[int, str] = {}
for _key, _width in REAL_WIDTHS.items():  # the first-registered key of a width (HiDream's llama is T5's 4096)
    WIDTH_TO_KEY.setdefault(_width, _key)

# A file's encoder keys name its family only when they are exactly one family's: a t5xxl-only file could be
# Flux's or SD3's, and its family then comes from the pipeline it is loaded into (or its metadata).
# Chroma and PixArt-Sigma share {t5xxl}: a key set held by two families names neither.
_KEY_SETS = [frozenset(f.keys) for f in FAMILIES.values()]
FAMILY_BY_KEYS = {frozenset(f.keys): f.name for f in FAMILIES.values() if _KEY_SETS.count(frozenset(f.keys)) == 1}

UNDERSTOOD_LAYOUTS = (
    f"native/ComfyUI {'|'.join(ENCODER_KEYS)}, "
    "diffusers {token: tensor}, "
    "A1111 string_to_param, kohya emb_params, OneTrainer emp_params"
)
DIFFUSERS_FILE = "learned_embeds"

PathLike = str | os.PathLike


def default_tokens(n: int) -> list[str]:
    """Placeholder tokens ``[v1] .. [vN]``."""
    return [f"[v{i}]" for i in range(1, n + 1)]
