"""Model families: the one place that knows how the supported model families differ, one file each.

A family file says which text encoders a pipeline has (and the soft prompt file key of each), how the
pipeline turns prompts into the conditioning its denoiser consumes (and long prompts, and the empty negative),
how to call that denoiser, and what it is trained to predict, in one `Family` row (base.py). Everything else in
the package is written against that row. A new family is a new file and one line in FAMILIES below.
"""

from __future__ import annotations

from ..errors import UnsupportedPipelineError
from .base import Cond, Encoder, Family, fits_window, prediction_type, prompt_tokens, size_rule, tokenizer_of
from .chroma import CHROMA
from .clip import CHUNK, chunk_token_ids
from .flux import FLUX
from .flux2 import FLUX2
from .flux2_klein import FLUX2_KLEIN, FLUX2_KLEIN_9B
from .hidream import HIDREAM
from .lumina2 import LUMINA2
from .pixart import PIXART_SIGMA
from .qwen_image import QWEN_IMAGE
from .sana import SANA
from .sd import SD1, SD2
from .sd3 import SD3
from .sdxl import SDXL

__all__ = [
    "CHUNK",
    "FAMILIES",
    "Cond",
    "Encoder",
    "Family",
    "chunk_token_ids",
    "detect_family",
    "families_of_class",
    "fits_window",
    "prediction_type",
    "prompt_tokens",
    "size_rule",
    "tokenizer_of",
]

# One registration line per family. The order is detection's and the file keys' (a width two encoders share,
# 4096, keeps the first family's key: t5xxl).
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        SD1,
        SD2,
        SDXL,
        SD3,
        FLUX,
        SANA,
        LUMINA2,
        CHROMA,
        PIXART_SIGMA,
        HIDREAM,
        QWEN_IMAGE,
        FLUX2_KLEIN,
        FLUX2_KLEIN_9B,
        FLUX2,
    )
}


def families_of_class(class_name: str | None) -> list[Family]:
    """The families whose pipelines have this class name (SD 1.x and 2.x share theirs)."""
    return [f for f in FAMILIES.values() if class_name in f.pipelines]


def detect_family(pipe) -> Family:
    """The family of a diffusers pipeline, from its class (and, where families share one, its encoders)."""
    name = type(pipe).__name__
    found = [f for f in families_of_class(name) if f.matches(pipe)]
    if not found:
        supported = ", ".join(f"{f.title} ({f.name})" for f in FAMILIES.values())
        raise UnsupportedPipelineError(f"{name} is not supported; supported families: {supported}")
    missing = [e.text_encoder for e in found[0].encoders if getattr(pipe, e.text_encoder, None) is None]
    if missing:  # e.g. SD3 loaded without its T5 to save memory
        raise UnsupportedPipelineError(
            f"{name} without {', '.join(missing)}: soft prompts need every text encoder of a {found[0].title} "
            f"pipeline; load it with all of them"
        )
    return found[0]
