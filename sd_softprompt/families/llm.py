"""What the families that condition on a decoder-only language model share (Sana, Lumina 2, Qwen-Image, Flux.2
Klein): a soft prompt there is prompt tuning (Lester et al. 2021) inside an image model. The pipeline wraps the
user's prompt in its own template (an instruction, a system prompt, a chat template); the soft tokens' vectors
go where the user's words go and the template's tokens stay the model's own.

Each family says which token ids its states stand on (`state_ids`: the pipeline's tokenization of its
template around the prompt, after the positions it selects or drops); from that this module finds where a
prompt sits in the states, which is what training aligns soft and hard prompts on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

StateIds = Callable[[Any, str], list[int]]  # (pipe, prompt) -> the token ids at the states' positions, unpadded


def span(full: list[int], empty: list[int]) -> tuple[int, int]:
    """(first position, token count) of a prompt in `full`, the template's ids around it, given `empty`, the
    template's ids around the empty prompt: what is not the template's common head or tail."""
    head = 0
    while head < min(len(full), len(empty)) and full[head] == empty[head]:
        head += 1
    tail = 0
    while tail < min(len(full), len(empty)) - head and full[-1 - tail] == empty[-1 - tail]:
        tail += 1
    return head, len(full) - tail - head


def prompt_span(state_ids: StateIds) -> Callable[[Any, str], tuple[int, int]]:
    """The `Family.prompt_span` of a family whose states stand on `state_ids`."""
    return lambda pipe, prompt: span(state_ids(pipe, prompt), state_ids(pipe, ""))


def template_positions(pipe, state_ids: StateIds, prompt: str) -> tuple[list[int], list[int]]:
    """(the positions of the template's tokens, those of the prompt's) in the states of `prompt`."""
    start, n = prompt_span(state_ids)(pipe, prompt)
    total = len(state_ids(pipe, prompt))
    return [*range(start), *range(start + n, total)], list(range(start, start + n))


def pad_states(cond: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """States and mask padded with masked zeros to `length` positions: a fixed window for pipelines that pad
    to the batch's longest prompt (a masked position changes nothing the denoiser computes)."""
    states, mask = cond["states"], cond["mask"]
    extra = length - states.shape[1]
    if extra <= 0:
        return cond
    return {
        "states": torch.nn.functional.pad(states, (0, 0, 0, extra)),
        "mask": torch.nn.functional.pad(mask, (0, extra)),
    }
