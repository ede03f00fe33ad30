"""The trainable rows: the soft tokens' N x width vectors inside frozen text encoders, and where they start."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..families import Encoder, Family, prompt_tokens, tokenizer_of
from ..inject.vocab import token_ids

if TYPE_CHECKING:
    from .config import TrainConfig


class SoftEmbedding(torch.nn.Module):
    """The frozen input embedding, with the soft tokens' rows read from trainable fp32 vectors.

    Only the N x width vectors are parameters: no gradient or optimizer state over the vocabulary table.
    """

    def __init__(self, base: torch.nn.Embedding, ids: list[int], vectors: torch.nn.Parameter):
        super().__init__()
        self.base = base
        slot = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=base.weight.device)
        slot[ids] = torch.arange(len(ids), device=slot.device)
        self.register_buffer("slot", slot, persistent=False)
        # Kept out of the module's parameters so that pipe.to(dtype) cannot cast the fp32 vectors.
        self.__dict__["vectors"] = vectors

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def padding_idx(self):
        return self.base.padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids)
        slot = self.slot[input_ids]
        soft = self.vectors.to(out.dtype)[slot.clamp(min=0)]
        return torch.where((slot >= 0).unsqueeze(-1), soft, out)


@contextmanager
def trainable_rows(pipe, family: Family, tokens: list[str], vectors: dict[str, torch.nn.Parameter]):
    """Swap each trained encoder's input embedding for a SoftEmbedding while the block runs."""
    swapped = []
    try:
        for key, param in vectors.items():
            enc = family.encoder(key)
            text_encoder = getattr(pipe, enc.text_encoder)
            base = text_encoder.get_input_embeddings()
            text_encoder.set_input_embeddings(SoftEmbedding(base, token_ids(pipe, enc, tokens), param))
            swapped.append((text_encoder, base))
        yield
    finally:
        for text_encoder, base in swapped:
            text_encoder.set_input_embeddings(base)


@contextmanager
def moved_to(pipe, names: list[str], device: str | torch.device = "cpu"):
    """Keep these components on `device` while the block runs, then put them back.

    With device="cpu" this parks frozen parts a step does not run, leaving accelerator memory to those
    that do (a real Flux transformer is 24 GB in bf16)."""
    moved = []
    try:
        for name in names:
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module) and module.device != torch.device(device):
                moved.append((module, module.device))
                module.to(device)
        yield
    finally:
        for module, previous in moved:
            module.to(previous)


def _resample(rows: torch.Tensor, n: int) -> torch.Tensor:
    """M rows -> n rows: averaged down or repeated up, in order (the prompt's meaning stays in place)."""
    return F.adaptive_avg_pool1d(rows.T.unsqueeze(0).float(), n)[0].T.contiguous()


def vocab_norm(pipe, enc: Encoder) -> float:
    w = getattr(pipe, enc.text_encoder).get_input_embeddings().weight.detach().float()
    return w.norm(dim=1).mean().item()


# --vectors auto: one vector per AUTO_TOKENS tokens of the target, AUTO_MIN to AUTO_MAX. On random tiny SD1 and
# SDXL of configs we did not choose (tiny.NOT_OURS), 300 steps, 150-200 token targets, D(soft) / D(truncated):
# 16 vectors came to 0.05 on an ordinary prompt but to 0.4-2.0 on one whose chunks repeat one another; 31-32
# vectors, from each token once, to 0.01-0.04 and 0.17-0.50 (docs/long-and-negative-prompts.md).
AUTO_TOKENS, AUTO_MIN, AUTO_MAX = 5, 2, 32


def auto_vectors(pipe, family: Family, target: str) -> int:
    """N for --vectors auto, from the target's length in the tokens of the encoders that set the states."""
    return max(AUTO_MIN, min(AUTO_MAX, math.ceil(prompt_tokens(pipe, family, target)[0] / AUTO_TOKENS)))


def initial_vectors(pipe, family: Family, cfg: TrainConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per encoder: the embeddings of the hard prompt's (or --init-words') tokens, the vocabulary's mean
    embedding (--init mean), or random at vocab norm."""
    words = cfg.init_words if cfg.init == "words" else cfg.target if cfg.init == "hard" else None
    out = {}
    for enc in family.encoders:
        table = getattr(pipe, enc.text_encoder).get_input_embeddings().weight.detach()
        ids = tokenizer_of(pipe, enc.tokenizer)(words, add_special_tokens=False).input_ids if words else []
        if cfg.init == "mean":
            out[enc.key] = table.float().mean(dim=0).cpu().expand(cfg.vectors, -1).clone()
        elif ids:
            if cfg.init == "hard":  # each token once, first place kept: a prompt whose clauses repeat would
                ids = list(dict.fromkeys(ids))  # otherwise start every vector at the same average of them
            out[enc.key] = _resample(table[ids].float().cpu(), cfg.vectors)
        else:
            v = torch.randn(cfg.vectors, table.shape[1], generator=generator)
            out[enc.key] = v / v.norm(dim=1, keepdim=True) * vocab_norm(pipe, enc)
    return out
