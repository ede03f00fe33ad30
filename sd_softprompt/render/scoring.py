"""Scoring generated pictures against a reference: one small interface, two implementations.

- ``toyworld.judge.JudgeScorer`` (the toy world): F, the share of the reference attributes the toy judge finds in the
  pictures, averaged over pictures.
- ``ClipScorer`` (real models): CLIP-T, the cosine between each picture and the reference prompt, and
  CLIP-I, the mean cosine between each picture and each reference picture, as in the Textual Inversion
  and DreamBooth papers. It takes any transformers ``CLIPModel`` id or local folder (``--clip-model``).

``score_rows`` scores each row of a finished grid (all its seeds) with either; ``generate.run_grid`` records
the result in the grid's JSON (``scores``) and ``sd-softprompt grid --clip-model`` prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image

from ..errors import ConfigError


@dataclass(frozen=True)
class Reference:
    """What the pictures should show: a prompt (CLIP-T), pictures (CLIP-I), toy-world attributes (F)."""

    prompt: str | None = None
    images: Sequence[Image.Image] = field(default_factory=tuple)
    attributes: Sequence[str] = field(default_factory=tuple)


class Scorer(Protocol):
    """Scores pictures against a reference; the keys of the result say which measures it took."""

    def score(self, images: Sequence[Image.Image], reference: Reference) -> dict[str, float]: ...


def score_rows(
    images_by_row: Sequence[Sequence[Image.Image]], reference: Reference, scorer: Scorer
) -> list[dict[str, float]]:
    """One score dict per row of pictures (e.g. a grid row: one picture per seed), in row order."""
    return [scorer.score(list(row), reference) for row in images_by_row]


class ClipScorer:
    """CLIP-T and CLIP-I with a transformers CLIPModel (hub id or local folder; nothing is downloaded
    unless the id is not cached and the network allows it)."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(model).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(model)
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"--clip-model {model}: could not load a CLIPModel and its processor ({first}); "
                "pass a hub id like openai/clip-vit-base-patch32 or a folder saved with save_pretrained"
            ) from None
        self.device = device
        self.name = f"clip:{model}"  # what a grid's JSON record names as its scorer

    @classmethod
    def from_parts(cls, model, processor, device: str = "cpu") -> ClipScorer:
        """A scorer around an already built CLIPModel and CLIPProcessor (tests, callers that hold one)."""
        scorer = cls.__new__(cls)
        scorer.model, scorer.processor, scorer.device = model.to(device).eval(), processor, device
        scorer.name = f"clip:{model.config.name_or_path or 'in memory'}"
        return scorer

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        return _unit(_features(self.model.get_image_features(pixel_values=pixels)))

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return _unit(_features(self.model.get_text_features(**tokens)))

    def score(self, images: Sequence[Image.Image], reference: Reference) -> dict[str, float]:
        if not images:
            raise ConfigError("no pictures to score")
        if reference.prompt is None and not reference.images:
            raise ConfigError("CLIP scores need a reference prompt (CLIP-T) or reference pictures (CLIP-I)")
        generated = self.image_features(images)
        scores = {}
        if reference.prompt is not None:
            scores["clip_t"] = float((generated @ self.text_features([reference.prompt]).T).mean())
        if reference.images:
            scores["clip_i"] = float((generated @ self.image_features(reference.images).T).mean())
        return scores


def _features(output) -> torch.Tensor:
    # transformers 5 may return a model output holding the projected features rather than a bare tensor
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise TypeError(f"unexpected CLIP features output {type(output).__name__}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
