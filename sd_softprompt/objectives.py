"""What training compares, and the measure of success.

- Text target (prompt distillation): "<soft tokens> <context>" against the cached "<hard prompt> <context>",
  compared where the model uses them: the denoiser's output (default), or the conditioning states.
- Image reconstruction (textual inversion): the denoiser's own training loss on cached VAE latents.
- The measure: denoiser-space distance D(p) = mean ||f(x_t, t, enc(p)) - f(x_t, t, enc(ref))||^2 on fixed
  random noisy latents and timesteps, f being the pipeline's UNet / Flux transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .families import Cond, Family, prediction_type

# Neutral suffixes the soft tokens are trained (and measured) next to, so that the vectors compose with
# other words instead of only working alone. "" is the soft prompt alone.
CONTEXTS = [
    "",
    "mountain view",
    "a photo",
    "highly detailed",
    "oil painting",
    "at night",
    "with a red house",
    "digital art",
    "in the style of watercolor",
    "cinematic lighting",
    "with a dog",
    "in winter",
]
# Held out from training: the composition part of the measure.
EVAL_CONTEXTS = ["", "mountain view", "with a small boat", "pencil sketch"]

LOSSES = ("denoiser", "sequence", "full")


def join(prefix: str, context: str) -> str:
    return f"{prefix} {context}".strip() if context else prefix


# ---------------------------------------------------------------- text target
@dataclass
class Alignment:
    """Where a soft prompt's and its hard prompt's token states correspond, for one context.

    CLIP is causal with absolute positions: after the prompt's own tokens, the same context word sits
    `shift = M - N` positions later in the hard prompt (M hard tokens, N soft tokens). States before the
    prompt (start-of-text) are the same for every prompt and carry no signal.
    """

    start: int  # first prompt position (1 after CLIP's start-of-text, 0 for T5)
    n_soft: int
    n_hard: int


def alignment(tokenizer, hard: str, n_soft: int) -> Alignment:
    ids = tokenizer(hard).input_ids
    bare = tokenizer(hard, add_special_tokens=False).input_ids
    start = 1 if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id else 0
    return Alignment(start, n_soft, len(bare))


def sequence_loss(soft: torch.Tensor, hard: torch.Tensor, a: Alignment) -> torch.Tensor:
    """MSE between aligned states: prompt region resampled to N positions, the rest shifted by M - N.

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
    return (n * loss_region + tail.shape[1] * loss_tail) / (n + tail.shape[1])


def full_loss(soft: torch.Tensor, hard: torch.Tensor, a: Alignment) -> torch.Tensor:
    """Position-by-position MSE over the whole sequence (the naive design, kept for comparison)."""
    return F.mse_loss(soft.float(), hard.float())


def cond_loss(kind: str, soft: Cond, hard: Cond, a: Alignment, scale: dict[str, float]) -> torch.Tensor:
    """Loss between two conditionings, each part divided by the target's variance so parts weigh alike."""
    states = (sequence_loss if kind == "sequence" else full_loss)(soft["states"], hard["states"], a)
    loss = states / scale["states"]
    if "pooled" in hard:
        # pooled vectors are position-free: compare directly
        loss = loss + F.mse_loss(soft["pooled"].float(), hard["pooled"].float()) / scale["pooled"]
    return loss


def cond_scale(cond: Cond) -> dict[str, float]:
    return {k: max(v.float().var().item(), 1e-8) for k, v in cond.items()}


# ---------------------------------------------------------------- noise, timesteps, denoiser targets
def sample_timesteps(pipe, family: Family, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """UNet families: integer timesteps; flow (Flux): sigmas in (0, 1) from the scheduler's shifted schedule."""
    if prediction_type(pipe, family) == "flow":
        u = torch.rand(n, generator=generator)
        shift = pipe.scheduler.config.get("shift", 1.0)
        sigmas = shift * u / (1 + (shift - 1) * u)  # the same time shift the Flux scheduler applies
        return sigmas.clamp(1e-3, 1.0).to(device)
    steps = pipe.scheduler.config.num_train_timesteps
    return torch.randint(0, steps, (n,), generator=generator).to(device)


def noisy_and_target(pipe, family: Family, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """x_t and what the denoiser should predict for it, per the pipeline's scheduler config."""
    kind = prediction_type(pipe, family)
    if kind == "flow":
        s = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return (1 - s) * x0 + s * noise, noise - x0
    x_t = pipe.scheduler.add_noise(x0, noise, t)
    if kind == "v_prediction":
        return x_t, pipe.scheduler.get_velocity(x0, noise, t)
    if kind == "epsilon":
        return x_t, noise
    raise ValueError(f"unsupported prediction type {kind!r}")


def image_loss(pipe, family: Family, x0, noise, t, cond: Cond) -> torch.Tensor:
    x_t, target = noisy_and_target(pipe, family, x0, noise, t)
    pred = family.predict(pipe, x_t, t, cond)
    return F.mse_loss(pred.float(), target.float())


# ---------------------------------------------------------------- the measure
@dataclass
class Probe:
    """Fixed noisy latents and timesteps on which every prompt is compared."""

    x_t: torch.Tensor
    t: torch.Tensor

    @classmethod
    def make(cls, pipe, family: Family, n: int = 8, size: int | None = None, seed: int = 0) -> Probe:
        g = torch.Generator().manual_seed(seed)
        size = size or default_size(pipe, family)
        shape = family.latent_shape(pipe, size, size)
        device, dtype = denoiser(pipe, family).device, denoiser(pipe, family).dtype
        x = torch.randn(n, *shape, generator=g).to(device, dtype)
        return cls(x, sample_timesteps(pipe, family, n, g, device))


def denoiser(pipe, family: Family):
    return getattr(pipe, family.denoiser)


def default_size(pipe, family: Family) -> int:
    """The model's default resolution, capped at 512 px to keep the probe cheap."""
    return min(family.native_size(pipe), 512)


@torch.no_grad()
def predictions(pipe, family: Family, prompt: str, probe: Probe, batch: int = 4) -> torch.Tensor:
    """The denoiser's outputs for one prompt on every probe sample, in float32."""
    cond = family.encode(pipe, [prompt])
    out = []
    for i in range(0, probe.x_t.shape[0], batch):
        x, t = probe.x_t[i : i + batch], probe.t[i : i + batch]
        out.append(family.predict(pipe, x, t, {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in cond.items()}).float())
    return torch.cat(out)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over probe samples of the per-sample mean squared difference."""
    return (a - b).pow(2).mean(dim=tuple(range(1, a.dim()))).mean().item()


def first_words(hard: str, n: int) -> str:
    return " ".join(hard.split()[:n])


def distance_report(
    pipe, family: Family, soft_text: str, hard: str, n: int, probe: Probe, contexts=EVAL_CONTEXTS
) -> dict:
    """D for the soft prompt and the two obvious baselines, alone and composed with held-out context words."""
    candidates = {"soft": soft_text, "first_n_words": first_words(hard, n), "empty": ""}
    report: dict = {"contexts": list(contexts), "probe_samples": int(probe.x_t.shape[0])}
    for where, ctxs in (("alone", [""]), ("composed", [c for c in contexts if c])):
        refs = {c: predictions(pipe, family, join(hard, c), probe) for c in ctxs}  # once, shared by candidates
        d = {
            name: sum(distance(predictions(pipe, family, join(p, c), probe), refs[c]) for c in ctxs) / len(ctxs)
            for name, p in candidates.items()
        }
        report[where] = {
            "D": d,
            "ratio_to_first_n_words": d["soft"] / max(d["first_n_words"], 1e-12),
            "ratio_to_empty": d["soft"] / max(d["empty"], 1e-12),
        }
    return report


def cosine_schedule(step: int, total: int, warmup: int, kind: str) -> float:
    """LR multiplier: linear warm-up, then constant or cosine decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
