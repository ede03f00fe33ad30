"""What training compares, built on the losses (losses.py): the two objectives.

- Text target (prompt distillation): "<soft tokens> <context>" against the cached "<hard prompt> <context>",
  compared where the model uses them: the denoiser's output (default), or the conditioning states.
- Image reconstruction (textual inversion): the denoiser's own training loss on cached VAE latents.

A new objective is one class in OBJECTIVES.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import ConfigError, printable
from ..families import Cond, Family, fits_window, prompt_tokens
from ..models.base import Positives
from ..models.builtin import builtin_of
from .data import OBJECT_TEMPLATES, STYLE_TEMPLATES, caption_for, load_image, scan_images
from .losses import alignments, cond_loss, cond_scale, get_loss, image_loss, min_snr_weights
from .measure import EVAL_POSITIVES, Probe, default_size, guided_probe, join, sample_timesteps, sampled_runs

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


def positives_for(pipe) -> Positives:
    """A model's positives for negative prompts: a built-in model's own where it supplies them (the toy world,
    whose captions name every attribute, so real-world phrases leave it no room), else TRAIN_POSITIVES and the
    held-out measure.EVAL_POSITIVES."""
    model = builtin_of(pipe)
    if model is not None and model.positives is not None:
        return model.positives
    return Positives(list(TRAIN_POSITIVES), list(EVAL_POSITIVES))


POOL_BATCH = 16  # noisy latents per denoiser forward while the denoiser loss's targets are predicted
SAMPLER_STEPS = 10  # --pool sampler: steps of each recorded run (the pool has probe_pool // this runs per context)


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
            pools = {"noise": self._pool_targets, "sampler": self._sampler_pool}
            (self._guided_pool if self.negative else pools[cfg.pool])(self.size)

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

    def _sampler_pool(self, size: int) -> None:
        """--pool sampler: the latents a sampler visits while it draws the hard prompt. Per context,
        `probe_pool // SAMPLER_STEPS` guided runs of "<hard> <context>" against no negative (the pipeline's
        scheduler; --pool-guidance, else the family's usual scale), every step recorded, and the hard prompt's
        predictions there. Pure noise at a low timestep (--pool noise) is a latent no sampler visits; these are
        the latents the pictures are drawn through."""
        runs = max(1, self.cfg.probe_pool // SAMPLER_STEPS)
        guidance = self.family.guidance if self.cfg.pool_guidance is None else self.cfg.pool_guidance
        generator = torch.Generator().manual_seed(self.cfg.seed + 1000)
        x_t, t, want, context_of = [], [], [], []
        negative = self.family.no_negative(self.pipe, runs)  # what the pipeline guides against by default
        if negative is None:
            raise ConfigError(
                f"--pool sampler: {self.family.title} takes no classifier-free guidance; use --pool noise"
            )
        what = f"targets: {runs} sampler runs of the hard prompt per context (once, before step 1)"
        with torch.no_grad(), _bar(len(self.contexts), what, self.cfg.progress) as bar:
            for c, target in enumerate(self.targets):
                positive = {k: v.expand(runs, *v.shape[1:]) for k, v in target.items()}
                run = sampled_runs(self.pipe, self.family, positive, negative, guidance, SAMPLER_STEPS, size, generator)
                x_t.append(run.x_t)
                t.append(run.t)
                want.append(run.eps_pos)
                context_of += [c] * run.x_t.shape[0]
                bar.update(1)
        self.probe = Probe(torch.cat(x_t), torch.cat(t))
        self.context_of = torch.tensor(context_of)
        self.want = torch.cat(want)
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


def training_resolution(pipe, family: Family, cfg: TrainConfig) -> int:
    """--resolution, else the model's own size (SD 1.5: 512, SDXL and Flux: 1024, the toy world: 64)."""
    return cfg.resolution or family.native_size(pipe)


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
        resolution = training_resolution(pipe, family, cfg)
        if resolution % multiple:
            raise ConfigError(f"--resolution {resolution}: a {family.name} model needs a multiple of {multiple}")
        shift = vae.config.get("shift_factor") or 0.0  # Flux's and SD3's VAE latents are shifted, SD's are not
        latents, self.captions = [], []
        captions = [caption_for(p, soft_text, tokens) for p in paths]  # bad captions refused before the VAE runs
        for p, caption in zip(paths, captions):
            if caption is not None:
                _check_caption(pipe, family, p.with_suffix(".txt"), caption, tokens, log)
        with torch.no_grad():  # the VAE runs once per image, never per step
            for p, caption in zip(paths, captions):
                x = load_image(p, resolution).unsqueeze(0).to(vae.device, vae.dtype)
                views = [x, x.flip(-1)] if cfg.flip else [x]
                for v in views:
                    latents.append(self._latent(pipe, family, v, shift)[0])
                    self.captions.append(caption)
        self.latents = torch.stack(latents)
        self.templates = [t.format(soft_text) for t in templates]

    @staticmethod
    def _latent(pipe, family: Family, x: torch.Tensor, shift: float) -> torch.Tensor:
        """What the denoiser works on for pictures `x`: the family's own normalisation where its pipeline has
        one, else the VAE's mode (a deep-compression autoencoder, Sana's, gives latents, not a distribution),
        shifted and scaled as its config says."""
        if family.vae_latents is not None:
            return family.vae_latents(pipe, x)
        encoded = pipe.vae.encode(x)
        z = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latent
        return (z - shift) * pipe.vae.config.scaling_factor

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


def _check_caption(pipe, family: Family, side, caption: str, tokens: list[str], log: Callable[[str], None]) -> None:
    """A caption whose soft tokens fall past the encoder's window would train nothing (the pipeline cuts them
    off, the vectors get no gradient): refused. One that is merely long loses its end, and says so."""
    end = max(caption.rfind(t) + len(t) for t in tokens if t in caption)
    n, window = prompt_tokens(pipe, family, caption[:end])
    if n > window:
        raise ConfigError(
            f"{printable(side, 120)}: the caption puts the soft tokens at token {n}, past the text encoder's "
            f"{window}-token window, so they would learn nothing; shorten it, or put {{}} nearer the start"
        )
    if not fits_window(pipe, family, caption):
        n, window = prompt_tokens(pipe, family, caption)
        log(
            f"warning: {printable(side, 120)}: the caption is {n} tokens; the last {n - window} are cut to fit the window"
        )


# --mode -> objective; each takes (pipe, family, cfg, tokens, log) and has loss(generator).
OBJECTIVES: dict[str, type[TextObjective] | type[ImageObjective]] = {"text": TextObjective, "images": ImageObjective}
