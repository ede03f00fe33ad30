"""The vocabulary of soft-prompt files: encoder keys, their real widths, the formats, and size limits.

Kept apart from the readers and writers so that both, and the in-memory type, share one table.
"""

from __future__ import annotations

import os

ENCODER_KEYS = ("clip_l", "clip_h", "clip_g", "t5xxl")
REAL_WIDTHS = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280, "t5xxl": 4096}
UNASSIGNED = "*"
FORMATS = ("native", "diffusers", "a1111", "kohya", "onetrainer")
FORMAT_VERSION = "sd-softprompt/1"
MAX_VECTORS = 75


# Keys other tools use for the same encoders (diffusers' Flux script and OneTrainer write "t5").
KEY_ALIASES = {"t5": "t5xxl"}
OUT_SUFFIX = "_out"  # OneTrainer's output-embedding vectors: not input embeddings, so not ours
WIDTH_TO_KEY = {width: key for key, width in REAL_WIDTHS.items()}

FAMILY_BY_KEYS = {
    frozenset({"clip_l"}): "sd1",
    frozenset({"clip_h"}): "sd2",
    frozenset({"clip_l", "clip_g"}): "sdxl",
    frozenset({"clip_l", "t5xxl"}): "flux",
    frozenset({"t5xxl"}): "flux",
}

UNDERSTOOD_LAYOUTS = (
    "native/ComfyUI clip_l|clip_h|clip_g|t5xxl, diffusers {token: tensor}, "
    "A1111 string_to_param, kohya emb_params, OneTrainer emp_params"
)
DIFFUSERS_FILE = "learned_embeds"

# A1111 "embedding images": the .pt dict as base64 JSON in this PNG text chunk, tensors written by
# its EmbeddingEncoder as {"TORCHTENSOR": nested lists} (modules/textual_inversion/image_embedding.py).
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_CHUNK = "sd-ti-embedding"
_PNG_TENSOR = "TORCHTENSOR"

PathLike = str | os.PathLike


def default_tokens(n: int) -> list[str]:
    """Placeholder tokens ``[v1] .. [vN]``."""
    return [f"[v{i}]" for i in range(1, n + 1)]
