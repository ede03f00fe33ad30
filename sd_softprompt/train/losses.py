"""The losses: how a soft prompt's conditioning or denoiser output is compared with its target.

Text mode compares "<soft> <context>" with "<hard prompt> <context>" where the model uses them: the denoiser's
outputs (LOSSES["denoiser"], the default) or the conditioning states, aligned token by token ("sequence") or
position by position ("full"). Images mode is the denoiser's own training loss (`image_loss`), optionally
min-SNR weighted. A new loss is one entry in LOSSES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..families import Cond, Family, prediction_type, tokenizer_of


# ---------------------------------------------------------------- where soft and hard states correspond
@dataclass
class Alignment:
    """Where a soft prompt's and its hard prompt's token states correspond, in one tokenizer's segment of the
    conditioning sequence (SD3 joins a CLIP segment and a T5 segment; the other families have one).

    CLIP is causal with absolute positions: after the prompt's own tokens, the same context word sits
    `shift = M - N` positions later in the hard prompt (M hard tokens, N soft tokens). States before the
    prompt (start-of-text) are the same for every prompt and carry no signal.
    """

    start: int  # first prompt position in the segment (1 after CLIP's start-of-text, 0 for T5)
    n_soft: int
    n_hard: int
    offset: int = 0  # where the segment begins in the states sequence
    length: int | None = None  # the segment's positions (None: to the sequence's end)


def alignment(tokenizer, hard: str, n_soft: int, offset: int = 0, length: int | None = None) -> Alignment:
    ids = tokenizer(hard).input_ids
    bare = tokenizer(hard, add_special_tokens=False).input_ids
    start = 1 if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id else 0
    return Alignment(start, n_soft, len(bare), offset, length)


def alignments(pipe, family: Family, hard: str, n_soft: int) -> list[Alignment]:
    """One Alignment per segment of the family's states: each tokenizer but the last fills its window."""
    if family.prompt_span is not None:  # a template around the prompt (LLM encoders): where it sits in it
        start, n_hard = family.prompt_span(pipe, hard)
        # padded on the left (Flux.2), a longer prompt starts earlier: no start holds for soft and hard prompts
        if start != family.prompt_span(pipe, f"{hard} {hard}")[0]:
            raise ConfigError(
                "the state losses line soft and hard prompts up from where the prompt starts, and this pipeline "
                "pads on the left, so that a prompt starts later the shorter it is; use --loss denoiser"
            )
        return [Alignment(start, n_soft, n_hard)]
    out, offset = [], 0
    for i, name in enumerate(family.state_tokenizers):
        tokenizer = tokenizer_of(pipe, name)
        length = tokenizer.model_max_length if i < len(family.state_tokenizers) - 1 else None
        out.append(alignment(tokenizer, hard, n_soft, offset, length))
        offset += length or 0
    return out


def sequence_loss(soft: torch.Tensor, hard: torch.Tensor, a: Alignment | list[Alignment]) -> torch.Tensor:
    """MSE between aligned states, segment by segment, weighted by the positions each compares."""
    total, positions = 0.0, 0
    for seg in a if isinstance(a, list) else [a]:
        end = None if seg.length is None else seg.offset + seg.length
        loss, n = _segment_loss(soft[:, seg.offset : end], hard[:, seg.offset : end], seg)
        total, positions = total + n * loss, positions + n
    return total / positions


def _segment_loss(soft: torch.Tensor, hard: torch.Tensor, a: Alignment) -> tuple[torch.Tensor, int]:
    """MSE in one segment: prompt region resampled to N positions, the rest shifted by M - N.

    The states that follow the prompt (context words, end-of-text, padding) are what the soft tokens
    influence through causal attention and what the denoiser cross-attends to; matching them at their
    aligned positions trains exactly that influence.
    """
    s, m, n = a.start, a.n_hard, a.n_soft
    length = soft.shape[1]
    # prompt region: M hard states averaged down (or repeated up) to N slots
    region = F.adaptive_avg_pool1d(hard[:, s : s + m].transpose(1, 2).float(), n).transpose(1, 2)
    loss_region = F.mse_loss(soft[:, s : s + n].float(), region)
    # what follows: soft position p <-> hard position p + (m - n); past the hard sequence's end, the soft
    # prompt's extra padding states are held to the hard prompt's last padding state (padding states
    # converge, and the denoiser sees every one of them)
    shift = m - n
    tail = hard[:, s + m :]
    if shift > 0:
        tail = torch.cat([tail, tail[:, -1:].expand(-1, shift, -1)], dim=1)
    tail = tail[:, : length - (s + n)]
    loss_tail = F.mse_loss(soft[:, s + n :].float(), tail.float())
    return (n * loss_region + tail.shape[1] * loss_tail) / (n + tail.shape[1]), n + tail.shape[1]


def full_loss(soft: torch.Tensor, hard: torch.Tensor, a: Alignment | list[Alignment]) -> torch.Tensor:
    """Position-by-position MSE over the whole sequence (the naive design, kept for comparison)."""
    return F.mse_loss(soft.float(), hard.float())


StatesLoss = Callable[[torch.Tensor, torch.Tensor, list[Alignment]], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """A text-mode loss: what it compares, and so which frozen parts its steps run."""

    description: str
    needs_denoiser: bool  # its steps run the denoiser (else only the text encoders)
    states: StatesLoss | None = None  # compares conditioning states with this; None: the denoiser's outputs
    pooled: bool = False  # denoiser outputs: on a pool of noisy latents whose hard-prompt outputs are cached


LOSSES: dict[str, Loss] = {
    "denoiser": Loss(
        "the denoiser's outputs on a pool of noisy latents (hard-prompt targets cached)", True, pooled=True
    ),
    # the pool's predecessor, kept to reproduce the comparison: one extra denoiser forward per step
    "denoiser-fresh": Loss("the denoiser's outputs on fresh noisy latents each step (target recomputed)", True),
    "sequence": Loss("the encoders' states, aligned token by token (no denoiser in the loop)", False, sequence_loss),
    "full": Loss("the encoders' states position by position (the naive design, for comparison)", False, full_loss),
}


def get_loss(name: str) -> Loss:
    """The registered loss called `name`; ConfigError naming the choices for any other name."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, not {name!r}") from None


def cond_loss(kind: str, soft: Cond, hard: Cond, a: list[Alignment], scale: dict[str, float]) -> torch.Tensor:
    """Loss between two conditionings, each part divided by the target's variance so parts weigh alike."""
    compare = get_loss(kind).states
    if compare is None:
        raise ConfigError(f"--loss {kind} compares the denoiser's outputs, not conditioning states")
    loss = compare(soft["states"], hard["states"], a) / scale["states"]
    if "pooled" in hard:
        # pooled vectors are position-free: compare directly
        loss = loss + F.mse_loss(soft["pooled"].float(), hard["pooled"].float()) / scale["pooled"]
    return loss


def cond_scale(cond: Cond) -> dict[str, float]:
    return {k: max(v.float().var().item(), 1e-8) for k, v in cond.items()}


# ---------------------------------------------------------------- noise and denoiser targets
def noisy_and_target(pipe, family: Family, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """x_t and what the denoiser should predict for it, per the pipeline's scheduler config."""
    kind = prediction_type(pipe, family)
    if kind == "flow":
        s = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return (1 - s) * x0 + s * noise, noise - x0
    # The DDPM forward process the denoiser was trained on, from the schedule's alphas_cumprod: the samplers'
    # own add_noise differ (Euler: x0 + sigma * noise, unscaled; DPM-Solver: misaligned until set_timesteps).
    a = pipe.scheduler.alphas_cumprod.to(x0.device)[t.to(x0.device)].view(-1, *([1] * (x0.dim() - 1)))
    a, b = a.sqrt().to(x0.dtype), (1 - a).sqrt().to(x0.dtype)
    x_t = a * x0 + b * noise
    if kind == "v_prediction":
        return x_t, a * noise - b * x0
    if kind == "epsilon":
        return x_t, noise
    raise ValueError(f"unsupported prediction type {kind!r}")


def min_snr_weights(pipe, family: Family, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample min-SNR-gamma weights (Hang et al. 2023): min(SNR, gamma) / SNR for an epsilon target,
    / (SNR + 1) for a v target, so that nearly clean timesteps (huge SNR) stop dominating the gradient."""
    kind = prediction_type(pipe, family)
    if kind == "flow":
        raise ConfigError("--snr-gamma weights a DDPM model's timesteps; this model is flow-matching, leave it out")
    alphas = pipe.scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alphas / (1 - alphas)
    return snr.clamp(max=gamma) / (snr + 1 if kind == "v_prediction" else snr)


def image_loss(pipe, family: Family, x0, noise, t, cond: Cond, snr_gamma: float | None = None) -> torch.Tensor:
    x_t, target = noisy_and_target(pipe, family, x0, noise, t)
    pred = family.predict(pipe, x_t, t, cond)
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
    return (per_sample * min_snr_weights(pipe, family, t, snr_gamma)).mean()
