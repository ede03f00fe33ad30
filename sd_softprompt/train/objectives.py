"""What training compares: the losses, and the two objectives built on them.

- Text target (prompt distillation): "<soft tokens> <context>" against the cached "<hard prompt> <context>",
  compared where the model uses them: the denoiser's output (default), or the conditioning states.
- Image reconstruction (textual inversion): the denoiser's own training loss on cached VAE latents.

A new loss is one entry in LOSSES; a new objective one class in OBJECTIVES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..families import Cond, Family, fits_window, prediction_type
from .data import OBJECT_TEMPLATES, STYLE_TEMPLATES, caption_for, load_image, scan_images
from .measure import EVAL_POSITIVES, Probe, default_size, guided_probe, join, sample_timesteps

if TYPE_CHECKING:
    from .config import TrainConfig

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
# What negative soft prompts are trained under: guided runs of these prompts (measured on EVAL_POSITIVES).
TRAIN_POSITIVES = [c for c in CONTEXTS if c]


@dataclass(frozen=True)
class Positives:
    """The positive prompts a negative prompt is trained under (`train`) and measured with (`eval`)."""

    train: list[str]
    eval: list[str]


def positives_for(pipe) -> Positives:
    """A model's positives for negative prompts: its own where it supplies them (the toy world, whose
    captions name every attribute, so real-world phrases leave it no room), else TRAIN_POSITIVES and the
    held-out measure.EVAL_POSITIVES."""
    from ..models.toyworld.model import is_toyworld

    if is_toyworld(pipe):
        from ..models.toyworld.world import NEGATIVE_EVAL_POSITIVES, NEGATIVE_TRAIN_POSITIVES

        return Positives(list(NEGATIVE_TRAIN_POSITIVES), list(NEGATIVE_EVAL_POSITIVES))
    return Positives(list(TRAIN_POSITIVES), list(EVAL_POSITIVES))


POOL_BATCH = 16  # noisy latents per denoiser forward while the denoiser loss's targets are predicted


# ---------------------------------------------------------------- text target
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
    out, offset = [], 0
    for i, name in enumerate(family.state_tokenizers):
        tokenizer = getattr(pipe, name)
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


def encode_unique(pipe, family: Family, prompts: list[str]) -> Cond:
    """`family.encode` of the prompts, each distinct prompt encoded once and the rows gathered.

    A batch drawn from a few templates (images mode) or contexts (text mode) repeats prompts; a prompt's
    encoding does not depend on the rest of the batch (every family pads to a fixed window), so the repeats
    cost a gather instead of a text-encoder forward and backward each."""
    unique = list(dict.fromkeys(prompts))
    cond = family.encode(pipe, unique)
    if len(unique) == len(prompts):
        return cond
    where = {p: i for i, p in enumerate(unique)}
    index = torch.tensor([where[p] for p in prompts])
    return {k: v[index.to(v.device)] for k, v in cond.items()}


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


# ---------------------------------------------------------------- the objectives
def _bar(total: int, what: str, progress: bool):
    """A progress bar for one-off work before the first step, on the main process only."""
    from tqdm.auto import tqdm

    dist = torch.distributed
    other_rank = dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
    return tqdm(total=total, desc=what, disable=not progress or other_rank, leave=False)


class TextObjective:
    """Distil the hard prompt: "<soft> <context>" against the cached "<hard> <context>", compared on the
    denoiser's output (--loss denoiser) or on the conditioning states (sequence, full).

    The hard prompt is encoded whole, in chunks when it is longer than the window (A1111 / ComfyUI), so the
    denoiser loss distils all of it into the N vectors. With --role negative the soft prompt stands alone, as
    a negative prompt does, and its pool is the latents a guided sampler visits (`positives_for(pipe).train`)."""

    name = "text"  # the written file's metadata["objective"]
    measured = True  # the final report measures D against the hard prompt

    def __init__(self, pipe, family: Family, cfg: TrainConfig, tokens: list[str], log: Callable[[str], None]):
        self.pipe, self.family, self.cfg, self.soft_text = pipe, family, cfg, "".join(tokens)
        self.kind = get_loss(cfg.loss)
        self.negative = cfg.role == "negative"
        # a negative prompt is used alone; a prompt is trained next to context words too
        self.contexts = [""] if self.negative else list(dict.fromkeys(CONTEXTS + list(cfg.context)))
        with torch.no_grad():  # frozen targets: computed once, never per step
            # one prompt at a time: a long prompt's chunk count depends on its context
            self.targets = [family.encode_long(pipe, [join(cfg.target, c)]) for c in self.contexts]
        self.size = cfg.probe_size or min(default_size(pipe, family), 256)
        if not self.kind.pooled:  # the state losses and denoiser-fresh batch the targets of several contexts
            if not fits_window(pipe, family, join(cfg.target, max(self.contexts, key=len))):
                raise ConfigError(
                    f"--loss {cfg.loss} batches targets of one length, and the --target (with its contexts) is "
                    "longer than the encoder's window; use --loss denoiser, which compares outputs on a cached pool"
                )
            self.stacked = {k: torch.cat([t[k] for t in self.targets]) for k in self.targets[0]}
        if self.kind.states is not None:
            self.scale = cond_scale(self.stacked)
            # Which tokenizers' token counts set the alignment is the family's to say (Flux: T5; SD3: CLIP, then T5).
            self.alignment = alignments(pipe, family, cfg.target, cfg.vectors)
        if self.kind.pooled:
            (self._guided_pool if self.negative else self._pool_targets)(self.size)

    @staticmethod
    def needs_denoiser(cfg: TrainConfig) -> bool:
        return get_loss(cfg.loss).needs_denoiser

    @property
    def metadata_loss(self) -> str:
        """The loss named in the written file's metadata."""
        return self.cfg.loss

    def _pool_targets(self, size: int) -> None:
        """The denoiser's outputs for the hard prompt are frozen targets too: a pool of noisy latents per
        context, predicted once, instead of one extra denoiser forward every step."""
        n = len(self.contexts) * self.cfg.probe_pool
        self.probe = Probe.make(self.pipe, self.family, n, size, seed=self.cfg.seed + 7)
        self.context_of = torch.arange(n) % len(self.contexts)
        # Contexts whose targets have one shape share batches (all of them, unless a long prompt's chunk
        # count differs between contexts): full batches of POOL_BATCH, whatever --probe-pool is.
        groups: dict[tuple, list[int]] = {}
        for row, c in enumerate(self.context_of.tolist()):
            groups.setdefault(tuple((k, *v.shape) for k, v in self.targets[c].items()), []).append(row)
        want: list[torch.Tensor | None] = [None] * n
        what = f"targets: the hard prompt's {self.family.denoiser} outputs on {n} noisy latents (once, before step 1)"
        with torch.no_grad(), _bar(n, what, self.cfg.progress) as bar:
            for rows in groups.values():
                for i in range(0, len(rows), POOL_BATCH):
                    pick = rows[i : i + POOL_BATCH]
                    targets = [self.targets[c] for c in self.context_of[pick].tolist()]
                    cond = {k: torch.cat([t[k] for t in targets]) for k in targets[0]}
                    out = self.family.predict(self.pipe, self.probe.x_t[pick], self.probe.t[pick], cond)
                    for j, row in enumerate(pick):
                        want[row] = out[j]
                    bar.update(len(pick))
        self.want = torch.stack(want)
        self.want_var = self.want.float().var().clamp_min(1e-8)

    def _guided_pool(self, size: int) -> None:
        """A negative prompt's pool: every step of guided runs of the training positives with the hard
        negative, and its predictions there. Where eps(soft) = eps(hard), the guided predictions agree."""
        positives = positives_for(self.pipe).train
        steps = max(1, -(-self.cfg.probe_pool * len(self.contexts) // len(positives)))
        guided = guided_probe(
            self.pipe,
            self.family,
            positives,
            self.targets[0],
            self.family.guidance,
            steps,
            size,
            self.cfg.seed + 7,
        )
        self.probe = Probe(guided.x_t, guided.t)
        self.context_of = torch.zeros(guided.x_t.shape[0], dtype=torch.long)  # the negative alone
        self.want = guided.eps_neg
        self.want_var = self.want.float().var().clamp_min(1e-8)

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        if self.kind.states is None and not self.kind.pooled:
            return self._fresh_loss(generator)
        if self.kind.states is None:
            pick = torch.randint(len(self.context_of), (self.cfg.batch_size,), generator=generator)
            pred = self._encode_soft(self.context_of[pick])
            pick = pick.to(self.probe.x_t.device)
            got = self.family.predict(self.pipe, self.probe.x_t[pick], self.probe.t[pick], pred)
            return F.mse_loss(got.float(), self.want[pick].float()) / self.want_var
        idx = torch.randint(len(self.contexts), (self.cfg.batch_size,), generator=generator)
        pred = self._encode_soft(idx)
        target = {k: v[idx.to(v.device)].to(pred["states"].device) for k, v in self.stacked.items()}
        return cond_loss(self.cfg.loss, pred, target, self.alignment, self.scale)

    def _fresh_loss(self, generator: torch.Generator) -> torch.Tensor:
        """The denoiser loss on noisy latents drawn this step, the hard prompt's output predicted alongside."""
        idx = torch.randint(len(self.contexts), (self.cfg.batch_size,), generator=generator)
        pred = self._encode_soft(idx)
        target = {k: v[idx.to(v.device)].to(pred["states"].device) for k, v in self.stacked.items()}
        seed = int(torch.randint(1 << 30, (1,), generator=generator))
        probe = Probe.make(self.pipe, self.family, self.cfg.batch_size, self.size, seed=seed)
        with torch.no_grad():
            want = self.family.predict(self.pipe, probe.x_t, probe.t, target)
        got = self.family.predict(self.pipe, probe.x_t, probe.t, pred)
        return F.mse_loss(got.float(), want.float()) / want.float().var().clamp_min(1e-8)

    def _encode_soft(self, contexts: torch.Tensor) -> dict[str, torch.Tensor]:
        return encode_unique(self.pipe, self.family, [join(self.soft_text, self.contexts[i]) for i in contexts])


class ImageObjective:
    """Textual inversion: the denoiser's loss on VAE latents encoded once (with flipped copies)."""

    name = "image"  # the written file's metadata["objective"]
    metadata_loss = "denoising"  # the loss named in the written file's metadata
    measured = False  # no hard prompt to measure against

    def __init__(self, pipe, family: Family, cfg: TrainConfig, tokens: list[str], log: Callable[[str], None]):
        self.pipe, self.family, self.cfg = pipe, family, cfg
        if cfg.snr_gamma is not None:  # a flow-matching model is refused here, before the VAE runs
            min_snr_weights(pipe, family, torch.zeros(1, dtype=torch.long), cfg.snr_gamma)
        soft_text = "".join(tokens)
        paths, warnings_ = scan_images(cfg.images)
        for w in warnings_:
            log(w)
        templates = STYLE_TEMPLATES if cfg.style else OBJECT_TEMPLATES
        vae = pipe.vae
        multiple = pipe.vae_scale_factor * family.latent_patch
        if cfg.resolution % multiple:
            raise ConfigError(f"--resolution {cfg.resolution}: a {family.name} model needs a multiple of {multiple}")
        shift = vae.config.get("shift_factor") or 0.0  # Flux's and SD3's VAE latents are shifted, SD's are not
        latents, self.captions = [], []
        with torch.no_grad():  # the VAE runs once per image, never per step
            for p in paths:
                x = load_image(p, cfg.resolution).unsqueeze(0).to(vae.device, vae.dtype)
                views = [x, x.flip(-1)] if cfg.flip else [x]
                for v in views:
                    z = vae.encode(v).latent_dist.mode()
                    latents.append(((z - shift) * vae.config.scaling_factor)[0])
                    self.captions.append(caption_for(p, soft_text, tokens))
        self.latents = torch.stack(latents)
        self.templates = [t.format(soft_text) for t in templates]

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        b = self.cfg.batch_size
        idx = torch.randint(len(self.latents), (b,), generator=generator)
        prompts = [
            self.captions[i] or self.templates[int(torch.randint(len(self.templates), (1,), generator=generator))]
            for i in idx
        ]
        x0 = self.latents[idx.to(self.latents.device)]
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        t = sample_timesteps(self.pipe, self.family, b, generator, x0.device)
        cond = encode_unique(self.pipe, self.family, prompts)
        return image_loss(self.pipe, self.family, x0, noise, t, cond, self.cfg.snr_gamma)

    @staticmethod
    def needs_denoiser(cfg: TrainConfig) -> bool:
        return True


# --mode -> objective; each takes (pipe, family, cfg, tokens, log) and has loss(generator).
OBJECTIVES: dict[str, type[TextObjective] | type[ImageObjective]] = {"text": TextObjective, "images": ImageObjective}
