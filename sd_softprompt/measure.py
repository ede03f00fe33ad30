"""The measure of success, and the fixed noisy latents it is taken on.

D(p) = mean ||f(x_t, t, enc(p)) - f(x_t, t, enc(ref))||^2 on fixed random noisy latents and timesteps, f being
the pipeline's denoiser (UNet or transformer). A soft prompt is compared with the hard prompt it stands for,
alone and composed with held-out context words, next to two baselines: the hard prompt's first N words and "".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .families import Family, prediction_type

# Held out from training: the composition part of the measure.
EVAL_CONTEXTS = ["", "mountain view", "with a small boat", "pencil sketch"]


def join(prefix: str, context: str) -> str:
    return f"{prefix} {context}".strip() if context else prefix


def sample_timesteps(pipe, family: Family, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """UNet families: integer timesteps; flow (Flux): sigmas in (0, 1) from the scheduler's shifted schedule."""
    if prediction_type(pipe, family) == "flow":
        u = torch.rand(n, generator=generator)
        shift = pipe.scheduler.config.get("shift", 1.0)
        sigmas = shift * u / (1 + (shift - 1) * u)  # the same time shift the Flux scheduler applies
        return sigmas.clamp(1e-3, 1.0).to(device)
    steps = pipe.scheduler.config.num_train_timesteps
    return torch.randint(0, steps, (n,), generator=generator).to(device)


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
