"""The measure of success, and the fixed noisy latents it is taken on.

D(p) = mean ||f(x_t, t, enc(p)) - f(x_t, t, enc(ref))||^2 on fixed random noisy latents and timesteps, f being
the pipeline's denoiser (UNet or transformer). A soft prompt is compared with the hard prompt it stands for,
alone and composed with held-out context words, next to two baselines: the hard prompt's first N words and "".
A hard prompt longer than the encoder's window is the reference whole (chunked, as A1111 / ComfyUI encode it),
and what the pipeline makes of it (cut to the window) is a third baseline.

A negative prompt is measured by what it does: the guided prediction eps(neg) + g * (eps(pos) - eps(neg))
on the latents a sampler visits while drawing held-out positive prompts (`guided_probe`, `guided_report`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..families import Cond, Family, fits_window, prediction_type, prompt_tokens

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
def predictions(pipe, family: Family, prompt: str, probe: Probe, batch: int = 4, encode=None) -> torch.Tensor:
    """The denoiser's outputs for one prompt on every probe sample, in float32; `encode` defaults to the
    pipeline's own prompt encoding (`family.encode`)."""
    cond = (encode or family.encode)(pipe, [prompt])
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
    """D for the soft prompt and the obvious baselines, alone and composed with held-out context words.

    The reference is the hard prompt as a whole: a prompt longer than the encoder's window is encoded in
    chunks (A1111 / ComfyUI); it is then also compared with what the pipeline makes of it, cut to the window.
    """
    candidates = {"soft": (soft_text, None), "first_n_words": (first_words(hard, n), None), "empty": ("", None)}
    tokens, window = prompt_tokens(pipe, family, hard)
    if tokens > window:
        candidates["truncated"] = (hard, family.encode)
    report: dict = {
        "contexts": list(contexts),
        "probe_samples": int(probe.x_t.shape[0]),
        "target_tokens": tokens,
        "window": window,
        "long_target": tokens > window,
    }
    for where, ctxs in (("alone", [""]), ("composed", [c for c in contexts if c])):
        if not ctxs:
            continue
        # the references once, shared by the candidates
        refs = {c: predictions(pipe, family, join(hard, c), probe, encode=family.encode_long) for c in ctxs}
        d = {
            name: sum(distance(predictions(pipe, family, join(p, c), probe, encode=enc), refs[c]) for c in ctxs)
            / len(ctxs)
            for name, (p, enc) in candidates.items()
        }
        report[where] = {"D": d} | {
            f"ratio_to_{name}": d["soft"] / max(d[name], 1e-12) for name in candidates if name != "soft"
        }
    return report


# ---------------------------------------------------------------- negative prompts: the guided measure
# A negative prompt acts only through classifier-free guidance: eps(neg) + g * (eps(pos) - eps(neg)). On one
# noisy latent two negatives' guided predictions differ by (1 - g) * (eps(neg_a) - eps(neg_b)), so what the
# positive prompts decide is *where* the comparison is made: on the latents a sampler visits while drawing
# them. Those are recorded from guided runs, once, with the reference negative.
# Held out from training, like EVAL_CONTEXTS (objectives.TRAIN_POSITIVES are the ones negatives train on).
EVAL_POSITIVES = ["a photo of a cat", "mountain view at night", "portrait of a woman, oil painting", "a red car"]


@dataclass
class GuidedProbe:
    """Every step of one guided sampling run per positive prompt: the denoiser's inputs and predictions."""

    x_t: torch.Tensor  # [P * steps, C, h, w] the denoiser's inputs (after the scheduler's input scaling)
    t: torch.Tensor  # [P * steps]
    positive: torch.Tensor  # [P * steps] index of the positive prompt
    eps_pos: torch.Tensor  # float32 prediction for the positive prompt
    eps_neg: torch.Tensor  # float32 prediction for the reference negative
    final: torch.Tensor  # [P, C, h, w] the runs' final latents
    guidance: float


def _batch(cond: Cond, n: int) -> Cond:
    return {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in cond.items()}


@torch.no_grad()
def guided_probe(
    pipe,
    family: Family,
    positives: list[str],
    negative: Cond,
    guidance: float,
    steps: int = 10,
    size: int | None = None,
    seed: int = 0,
) -> GuidedProbe:
    """Sample each positive prompt with `negative` (a conditioning: it may be a chunked long prompt) the way
    the pipeline does (its scheduler, its starting noise for `seed`), recording every step."""
    n = len(positives)
    generator = torch.Generator("cpu").manual_seed(seed)
    return sampled_runs(
        pipe, family, family.encode(pipe, positives), _batch(negative, n), guidance, steps, size, generator
    )


@torch.no_grad()
def sampled_runs(
    pipe,
    family: Family,
    positive: Cond,
    negative: Cond,
    guidance: float,
    steps: int,
    size: int | None,
    generator: torch.Generator,
) -> GuidedProbe:
    """One guided run per row of `positive` (against the same row of `negative`): the pipeline's scheduler,
    its input scaling and its guidance, the starting noise drawn from `generator`; every step recorded."""
    import copy

    from diffusers.utils.torch_utils import randn_tensor

    den = denoiser(pipe, family)
    size = size or default_size(pipe, family)
    scheduler = copy.deepcopy(pipe.scheduler)  # the pipeline's own stays untouched
    if scheduler.config.get("use_dynamic_shifting"):
        raise ConfigError(
            "this pipeline's scheduler shifts its timesteps by the picture's size (use_dynamic_shifting), which "
            "training's sampler runs (--pool sampler, --role negative) do not reproduce yet; for a prompt, use the "
            "default --pool noise"
        )
    scheduler.set_timesteps(steps, device=den.device)
    # flow schedulers count time in 0..num_train_timesteps; the family's predict takes sigmas in [0, 1]
    per_unit = scheduler.config.num_train_timesteps if prediction_type(pipe, family) == "flow" else 1
    n = next(iter(positive.values())).shape[0]
    x = randn_tensor((n, *family.latent_shape(pipe, size, size)), generator=generator, device=den.device)
    x = x.to(den.dtype) * getattr(scheduler, "init_noise_sigma", 1.0)
    record: dict[str, list[torch.Tensor]] = {"x_t": [], "t": [], "eps_pos": [], "eps_neg": []}
    for t in scheduler.timesteps:
        scale = getattr(scheduler, "scale_model_input", None)  # Euler-type schedulers scale their input
        x_in = scale(x, t) if scale else x
        tt = (t / per_unit).expand(n)
        e_pos = family.predict(pipe, x_in, tt, positive)
        e_neg = family.predict(pipe, x_in, tt, negative)
        for key, value in (("x_t", x_in), ("t", tt), ("eps_pos", e_pos.float()), ("eps_neg", e_neg.float())):
            record[key].append(value)
        x = scheduler.step(e_neg + guidance * (e_pos - e_neg), t, x, return_dict=False)[0]
    cat = {k: torch.cat(v) for k, v in record.items()}
    return GuidedProbe(positive=torch.arange(n).repeat(steps), final=x, guidance=guidance, **cat)


@torch.no_grad()
def guided_predictions(pipe, family: Family, negative: Cond, probe: GuidedProbe, batch: int = 8) -> torch.Tensor:
    """eps(neg) + g * (eps(pos) - eps(neg)) on every probe point, for one negative conditioning."""
    out = []
    for i in range(0, probe.x_t.shape[0], batch):
        x, t = probe.x_t[i : i + batch], probe.t[i : i + batch]
        e_neg = family.predict(pipe, x, t, _batch(negative, x.shape[0])).float()
        out.append(e_neg + probe.guidance * (probe.eps_pos[i : i + batch] - e_neg))
    return torch.cat(out)


def guided_report(pipe, family: Family, candidates: dict[str, Cond], probe: GuidedProbe) -> dict:
    """D_guided for each candidate negative: the mean squared difference of its guided prediction from the
    reference negative's (the one the probe was sampled with), over every step of every run."""
    reference = probe.eps_neg + probe.guidance * (probe.eps_pos - probe.eps_neg)
    d = {name: distance(guided_predictions(pipe, family, cond, probe), reference) for name, cond in candidates.items()}
    report: dict = {"D": d, "guidance": probe.guidance, "points": int(probe.x_t.shape[0])}
    for name in (n for n in d if n != "empty" and "empty" in d):  # how much of the negative's effect is missed
        report[f"{name}_ratio_to_empty"] = d[name] / max(d["empty"], 1e-12)
    return report


def negative_report(
    pipe,
    family: Family,
    soft_text: str,
    hard: str,
    n: int,
    size: int | None,
    steps: int = 10,
    positives: list[str] | None = None,
) -> dict:
    """The guided measure on the held-out positives (default EVAL_POSITIVES), against the whole hard negative:
    the soft negative, the hard one cut to the window (when it is longer), its first N words, and no negative."""
    positives = list(EVAL_POSITIVES if positives is None else positives)
    with torch.no_grad():
        reference = family.encode_long(pipe, [hard])
        probe = guided_probe(pipe, family, positives, reference, family.guidance, steps, size, seed=12345)
        candidates = {
            "soft": family.encode(pipe, [soft_text]),
            "first_n_words": family.encode(pipe, [first_words(hard, n)]),
            "empty": family.no_negative(pipe, 1),
        }
        if not fits_window(pipe, family, hard):
            candidates["truncated"] = family.encode(pipe, [hard])
        report = guided_report(pipe, family, candidates, probe)
    return report | {"positives": positives, "steps": steps}
