"""One training loop for both objectives: only the N x width soft vectors learn.

text   (prompt distillation): make "<soft> <context>" act like "<hard prompt> <context>" on the frozen
                              denoiser (or, with --loss sequence, on the encoders' states alone); no images
images (textual inversion):   the denoiser's own loss on cached VAE latents of a folder of pictures
"""

from __future__ import annotations

import math
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import objectives as obj
from .atomic import atomic_write, write_json
from .errors import ConfigError, TrainingDiverged
from .families import Encoder, Family, detect_family
from .format import MAX_VECTORS, SoftPrompt
from .loader import load_soft_prompt, token_ids, unload_soft_prompt


@dataclass
class TrainConfig:
    """Everything a run needs; the CLI's `train` flags map one to one onto these fields."""

    model: str  # hub id or local path of a diffusers pipeline
    out: str  # the soft prompt file to write (.safetensors, native format)
    mode: str = "text"  # "text" or "images"
    target: str | None = None  # text mode: the hard prompt
    images: str | None = None  # images mode: a folder of png/jpg/jpeg/webp (+ optional same-name .txt captions)
    vectors: int = 4
    steps: int = 300
    lr: float = 5e-3
    batch_size: int = 4
    grad_accum: int = 1
    warmup: int = 20  # steps of linear warm-up
    schedule: str = "constant"  # or "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16": the frozen models' dtype; vectors stay fp32
    init: str = "hard"  # "hard" (the hard prompt's own token embeddings; random without a target) | "random" | "words"
    init_words: str | None = None
    context: list[str] = field(default_factory=list)  # extra context suffixes (added to the built-in ones)
    loss: str = "denoiser"  # text mode: "denoiser" | "sequence" | "full" (see objectives.py and the README)
    norm_weight: float = 0.0  # >0 pulls vector norms towards the vocabulary's mean norm
    encoders: list[str] | None = None  # train only these encoder keys (e.g. ["t5xxl"]); default all
    tokens: list[str] | None = None  # placeholder names (default [v1]..[vN])
    name: str | None = None
    # images mode
    resolution: int = 512
    flip: bool = True
    style: bool = False
    validate_every: int = 0
    validation_prompts: list[str] = field(default_factory=list)
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    # bookkeeping
    checkpoint_every: int = 100
    resume: bool = False
    probe_pool: int = 32  # denoiser loss: noisy latents per context whose hard-prompt targets are computed once
    eval_samples: int = 8  # noisy latents in the denoiser-distance probe
    probe_size: int | None = None  # image size of the probe (default: the model's, at most 512)
    device: str | None = None
    offload: bool = True  # park frozen parts a step does not run (VAE, text-mode denoiser) in CPU memory
    progress: bool = True

    @property
    def out_path(self) -> Path:
        return Path(self.out)


@dataclass
class TrainResult:
    soft_prompt: Path  # the written soft prompt file
    report: Path  # the report JSON beside it
    metrics: dict  # what the report holds


# ---------------------------------------------------------------- trainable rows
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


def unused_in_loop(cfg: TrainConfig, family: Family) -> list[str]:
    """Frozen parts the training steps never run: the VAE once latents are cached (or always, in text
    mode), and the denoiser in text mode unless the loss needs it (it comes back for the final measure)."""
    names = ["vae"]
    if cfg.mode == "text" and cfg.loss != "denoiser":
        names.append(family.denoiser)
    return names


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


# ---------------------------------------------------------------- initial vectors
def _resample(rows: torch.Tensor, n: int) -> torch.Tensor:
    """M rows -> n rows: averaged down or repeated up, in order (the prompt's meaning stays in place)."""
    return F.adaptive_avg_pool1d(rows.T.unsqueeze(0).float(), n)[0].T.contiguous()


def vocab_norm(pipe, enc: Encoder) -> float:
    w = getattr(pipe, enc.text_encoder).get_input_embeddings().weight.detach().float()
    return w.norm(dim=1).mean().item()


def initial_vectors(pipe, family: Family, cfg: TrainConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per encoder: the embeddings of the hard prompt's (or --init-words') tokens, or random at vocab norm."""
    words = cfg.init_words if cfg.init == "words" else cfg.target if cfg.init == "hard" else None
    out = {}
    for enc in family.encoders:
        table = getattr(pipe, enc.text_encoder).get_input_embeddings().weight.detach()
        ids = getattr(pipe, enc.tokenizer)(words, add_special_tokens=False).input_ids if words else []
        if ids:
            out[enc.key] = _resample(table[ids].float().cpu(), cfg.vectors)
        else:
            v = torch.randn(cfg.vectors, table.shape[1], generator=generator)
            out[enc.key] = v / v.norm(dim=1, keepdim=True) * vocab_norm(pipe, enc)
    return out


# ---------------------------------------------------------------- objectives
class TextObjective:
    """Distil the hard prompt: "<soft> <context>" against the cached "<hard> <context>", compared on the
    denoiser's output (--loss denoiser) or on the conditioning states (sequence, full)."""

    def __init__(self, pipe, family: Family, cfg: TrainConfig, soft_text: str):
        self.pipe, self.family, self.cfg, self.soft_text = pipe, family, cfg, soft_text
        self.contexts = list(dict.fromkeys(obj.CONTEXTS + list(cfg.context)))
        with torch.no_grad():  # frozen targets: computed once, never per step
            parts = [
                family.encode(pipe, [obj.join(cfg.target, c) for c in self.contexts[i : i + 8]])
                for i in range(0, len(self.contexts), 8)
            ]
            self.targets = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self.scale = obj.cond_scale(self.targets)
        # The denoiser's states come from the last encoder's tokenizer (SD: the only one; SDXL: both
        # tokenize alike; Flux: T5), so its token counts set the alignment.
        self.alignment = obj.alignment(getattr(pipe, family.encoders[-1].tokenizer), cfg.target, cfg.vectors)
        if cfg.loss == "denoiser":
            self._pool_targets(cfg.probe_size or min(obj.default_size(pipe, family), 256))

    def _pool_targets(self, size: int) -> None:
        """The denoiser's outputs for the hard prompt are frozen targets too: a pool of noisy latents per
        context, predicted once, instead of one extra denoiser forward every step."""
        n = len(self.contexts) * self.cfg.probe_pool
        self.probe = obj.Probe.make(self.pipe, self.family, n, size, seed=self.cfg.seed + 7)
        self.context_of = torch.arange(n) % len(self.contexts)
        with torch.no_grad():
            chunks = []
            for i in range(0, n, 8):
                ctx = self.context_of[i : i + 8]
                cond = {k: v[ctx.to(v.device)] for k, v in self.targets.items()}
                chunks.append(self.family.predict(self.pipe, self.probe.x_t[i : i + 8], self.probe.t[i : i + 8], cond))
        self.want = torch.cat(chunks)
        self.want_var = self.want.float().var().clamp_min(1e-8)

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        if self.cfg.loss == "denoiser":
            pick = torch.randint(len(self.context_of), (self.cfg.batch_size,), generator=generator)
            pred = self._encode_soft(self.context_of[pick])
            pick = pick.to(self.probe.x_t.device)
            got = self.family.predict(self.pipe, self.probe.x_t[pick], self.probe.t[pick], pred)
            return F.mse_loss(got.float(), self.want[pick].float()) / self.want_var
        idx = torch.randint(len(self.contexts), (self.cfg.batch_size,), generator=generator)
        pred = self._encode_soft(idx)
        target = {k: v[idx.to(v.device)].to(pred["states"].device) for k, v in self.targets.items()}
        return obj.cond_loss(self.cfg.loss, pred, target, self.alignment, self.scale)

    def _encode_soft(self, contexts: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.family.encode(self.pipe, [obj.join(self.soft_text, self.contexts[i]) for i in contexts])


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
OBJECT_TEMPLATES = [
    "a photo of {}",
    "a rendering of {}",
    "a close-up photo of {}",
    "a bright photo of {}",
    "a good photo of {}",
    "a photo of the {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a picture in the style of {}",
    "an illustration in the style of {}",
]


def scan_images(folder: str | None) -> tuple[list[Path], list[str]]:
    """Image files in a folder and warnings for the other files; ConfigError if there are none."""
    if not folder:
        raise ConfigError("--images is required in images mode: a folder of png/jpg/jpeg/webp pictures")
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a folder; --images takes a folder of png/jpg/jpeg/webp pictures")
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES and p.suffix.lower() != ".txt"]
    if not images:
        raise ConfigError(f"{path}: no png/jpg/jpeg/webp images in this folder")
    return images, [f"skipped {p.name}: not a png/jpg/jpeg/webp image" for p in skipped]


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """Resize the short side to `resolution`, centre-crop, scale to [-1, 1]; CHW float."""
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except Exception as e:  # PIL raises many types for bad files
        raise ConfigError(f"{path}: cannot read this image ({e}); remove it or replace it") from None
    scale = resolution / min(img.size)
    img = img.resize(
        (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))), Image.BICUBIC
    )
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1


def caption_for(path: Path, soft_text: str, tokens: list[str]) -> str | None:
    """A same-name .txt caption with the soft tokens put where {} (or the tokens themselves) mark the spot."""
    side = path.with_suffix(".txt")
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").strip()
    if "{}" in text:
        return text.replace("{}", soft_text)
    if any(t in text for t in tokens):
        return text
    return f"{soft_text} {text}".strip()


class ImageObjective:
    """Textual inversion: the denoiser's loss on VAE latents encoded once (with flipped copies)."""

    def __init__(self, pipe, family: Family, cfg: TrainConfig, soft_text: str, tokens: list[str], log):
        self.pipe, self.family, self.cfg = pipe, family, cfg
        paths, warnings_ = scan_images(cfg.images)
        for w in warnings_:
            log(w)
        templates = STYLE_TEMPLATES if cfg.style else OBJECT_TEMPLATES
        vae = pipe.vae
        multiple = pipe.vae_scale_factor * family.latent_patch
        if cfg.resolution % multiple:
            raise ConfigError(f"--resolution {cfg.resolution}: a {family.name} model needs a multiple of {multiple}")
        shift = vae.config.get("shift_factor") or 0.0  # Flux's VAE latents are shifted, SD's are not
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
        t = obj.sample_timesteps(self.pipe, self.family, b, generator, x0.device)
        cond = self.family.encode(self.pipe, prompts)
        return obj.image_loss(self.pipe, self.family, x0, noise, t, cond)


# ---------------------------------------------------------------- checkpoints
def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.stem + ".checkpoint.pt")


def _run_key(cfg: TrainConfig) -> dict:
    """What a checkpoint must agree on to be resumed (not steps: the total may be extended)."""
    return {"model": cfg.model, "mode": cfg.mode, "target": cfg.target or "", "vectors": cfg.vectors, "loss": cfg.loss}


def save_checkpoint(path: Path, cfg: TrainConfig, step: int, vectors, optimizer, losses: list[float]) -> None:
    state = {
        "run": _run_key(cfg),
        "step": step,
        "vectors": {k: v.detach().cpu().clone() for k, v in vectors.items()},
        "optimizer": optimizer.state_dict(),
        # The data RNG is re-seeded from (seed, step, rank) every step, so (seed, step) is its whole state.
        "rng": {"seed": cfg.seed, "torch": torch.get_rng_state()},
        "losses": losses,
    }
    atomic_write([(path, lambda tmp: torch.save(state, tmp))])


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"{path}: cannot read this checkpoint ({type(e).__name__}); delete it to start over"
        ) from None
    if state.get("run") != _run_key(cfg):
        raise ConfigError(
            f"{path}: this checkpoint is from another run ({state.get('run')}); delete it or change --out"
        )
    return state


# ---------------------------------------------------------------- the loop
def _check_config(cfg: TrainConfig) -> None:
    """Refuse bad input before anything is loaded or written."""
    if cfg.mode not in ("text", "images"):
        raise ConfigError(f"--mode must be text or images, not {cfg.mode!r}")
    if cfg.mode == "text" and not (cfg.target or "").strip():
        raise ConfigError(
            '--target is required in text mode: the hard prompt to distil, e.g. --target "image of serene landscape at sunrise"'
        )
    if cfg.mode == "images":
        scan_images(cfg.images)
    if not 1 <= cfg.vectors <= MAX_VECTORS:
        raise ConfigError(f"--vectors must be between 1 and {MAX_VECTORS}, not {cfg.vectors}")
    if min(cfg.steps, cfg.batch_size, cfg.grad_accum, cfg.probe_pool, cfg.eval_samples) < 1:
        raise ConfigError("--steps, --batch-size, --grad-accum, --probe-pool and --eval-samples must be at least 1")
    if cfg.loss not in obj.LOSSES:
        raise ConfigError(f"--loss must be one of {', '.join(obj.LOSSES)}, not {cfg.loss!r}")
    if cfg.init not in ("hard", "random", "words") or (cfg.init == "words" and not cfg.init_words):
        raise ConfigError('--init must be hard, random or words (words needs --init-words "...")')
    if cfg.schedule not in ("constant", "cosine"):
        raise ConfigError(f"--schedule must be constant or cosine, not {cfg.schedule!r}")
    out = cfg.out_path
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"{out}: --out must be a .safetensors file (convert to other formats with sd-softprompt convert)"
        )
    if out.is_dir():
        raise ConfigError(f"{out}: --out is a folder; give a file name ending in .safetensors")
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(f"{out}: cannot write there ({probe} is not a writable folder); choose another --out")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@dataclass
class _Run:
    """What the loop works on, set up once."""

    accelerator: object
    pipe: object
    family: Family
    tokens: list[str]
    init: dict[str, torch.Tensor]  # initial vectors of every encoder
    vectors: dict[str, torch.nn.Parameter]  # the trained ones, fp32
    log: object


def _setup(cfg: TrainConfig, pipe) -> _Run:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps its mixed-precision setting in a process-wide singleton; reset it (not the process
    # group) so that train() can be called again in the same process with another precision.
    AcceleratorState._reset_state()
    try:
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"--mixed-precision {cfg.mixed_precision}: not available here ({e})") from None
    log = (lambda m: print(f"sd-softprompt: {m}", flush=True)) if accelerator.is_main_process else (lambda m: None)
    if pipe is None:
        from .pipeline import load_pipeline

        dtype = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[
            cfg.mixed_precision
        ]  # frozen models in the training dtype
        pipe = load_pipeline(cfg.model, device=str(accelerator.device), dtype=dtype, progress=False)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    family = detect_family(pipe)
    keys = cfg.encoders or list(family.keys)
    unknown = [k for k in keys if k not in family.keys]
    if unknown:
        raise ConfigError(f"--encoders {unknown}: a {family.name} model has {', '.join(family.keys)}")
    # Initial vectors go in like any soft prompt; the trained encoders then read their rows from params.
    if cfg.init == "hard" and not cfg.target:
        log("--init hard without --target: starting from random vectors at the vocabulary's norm")
    init = initial_vectors(pipe, family, cfg, torch.Generator().manual_seed(cfg.seed))
    tokens = load_soft_prompt(pipe, SoftPrompt(vectors=init, tokens=cfg.tokens))
    vectors = {k: torch.nn.Parameter(init[k].to(accelerator.device, torch.float32)) for k in keys}
    return _Run(accelerator, pipe, family, tokens, init, vectors, log)


def train(cfg: TrainConfig, pipe=None) -> TrainResult:
    """Train a soft prompt; write it (native .safetensors) and a report JSON beside it.

    `pipe`: an already loaded pipeline to train against (its device and dtype are used as they are; it is
    left as it came); by default `cfg.model` is loaded in the dtype that `cfg.mixed_precision` names.
    """
    _check_config(cfg)
    run = _setup(cfg, pipe)
    try:
        losses, fixed, timing, start = _loop(cfg, run)
        return _finish(cfg, run, losses, fixed, timing, start)
    finally:
        unload_soft_prompt(run.pipe, run.tokens)  # also after an error


def _loop(cfg: TrainConfig, run: _Run) -> tuple[list[float], dict, dict, int]:
    """The training loop. Returns the losses, the fixed-batch loss before/after, timings, first step."""
    acc, vectors, soft_text = run.accelerator, run.vectors, "".join(run.tokens)
    norms = {k: vocab_norm(run.pipe, run.family.encoder(k)) for k in vectors}
    ckpt = checkpoint_path(cfg.out_path)
    optimizer = torch.optim.AdamW(vectors.values(), lr=cfg.lr, weight_decay=0.0)
    start, losses = 0, []
    if cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt, cfg)
        with torch.no_grad():
            for k, v in vectors.items():
                v.copy_(state["vectors"][k])
        optimizer.load_state_dict(state["optimizer"])
        start, losses = state["step"], list(state["losses"])
        run.log(f"resuming from {ckpt} at step {start}")
    elif cfg.resume:
        run.log(f"no checkpoint at {ckpt}: starting from step 0")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: obj.cosine_schedule(s, cfg.steps, cfg.warmup, cfg.schedule), last_epoch=start - 1
    )
    # Only the optimizer goes through accelerate (fp16 loss scaling): a prepared scheduler would step once
    # per process, and there is no model to wrap, gradients are averaged by hand below.
    optimizer = acc.prepare(optimizer)

    with trainable_rows(run.pipe, run.family, run.tokens, vectors), ExitStack() as stack:
        t0 = time.perf_counter()
        if cfg.mode == "text":
            objective = TextObjective(run.pipe, run.family, cfg, soft_text)
        else:
            objective = ImageObjective(run.pipe, run.family, cfg, soft_text, run.tokens, run.log)
        stack.enter_context(moved_to(run.pipe, unused_in_loop(cfg, run.family) if cfg.offload else []))
        fixed = {"before": _fixed_batch_loss(objective, acc)}
        timing = {"setup_s": time.perf_counter() - t0}  # frozen targets, target pool or VAE latents, once
        t0 = time.perf_counter()
        bar = tqdm(
            range(start, cfg.steps),
            initial=start,
            total=cfg.steps,
            disable=not (acc.is_main_process and cfg.progress),
            desc="train",
        )
        for step in bar:
            # One generator per (seed, step, rank): resuming needs no RNG state beyond the step.
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 4_099 + acc.process_index)
            total = 0.0
            for _ in range(cfg.grad_accum):
                with acc.autocast():
                    loss = objective.loss(g)
                    if cfg.norm_weight > 0:  # keep norms near the vocabulary's, so the vectors don't drown the prompt
                        loss = loss + cfg.norm_weight * sum(
                            ((v.norm(dim=1) - norms[k]) / norms[k]).pow(2).mean() for k, v in vectors.items()
                        )
                acc.backward(loss / cfg.grad_accum)
                total += loss.item() / cfg.grad_accum
            if not math.isfinite(total):
                kept = f"; the last good checkpoint is {ckpt} (add --resume)" if ckpt.exists() else ""
                raise TrainingDiverged(
                    f"step {step + 1}: the loss is {total}; lower --lr or use --mixed-precision no{kept}"
                )
            for v in vectors.values():  # data parallel without DDP: average the few N x width gradients by hand
                v.grad = acc.reduce(v.grad, reduction="mean")
            acc.clip_grad_norm_(list(vectors.values()), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
            bar.set_postfix(loss=f"{total:.4f}")
            done = step + 1
            if acc.is_main_process and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_checkpoint(ckpt, cfg, done, vectors, optimizer, losses)
            if acc.is_main_process and cfg.validate_every and done % cfg.validate_every == 0:
                _validate(run.pipe, cfg, soft_text, done)
        bar.close()
        timing["loop_s"] = time.perf_counter() - t0
        fixed["after"] = _fixed_batch_loss(objective, acc)
    return losses, fixed, timing, start


def _finish(cfg: TrainConfig, run: _Run, losses: list[float], fixed: dict, timing: dict, start: int) -> TrainResult:
    """Measure, then write the soft prompt and its report (main process), and drop the checkpoint."""
    pipe, family, acc = run.pipe, run.family, run.accelerator
    # Encoders left out of --encoders keep their initial vectors: the file then behaves as in training.
    final = dict(run.init) | {k: v.detach().float().cpu() for k, v in run.vectors.items()}
    soft = SoftPrompt(vectors=final, tokens=run.tokens)
    load_soft_prompt(pipe, soft, replace=True)
    metrics = {
        "mode": cfg.mode,
        "family": family.name,
        "steps": cfg.steps,
        "losses": losses,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        # the same batch (contexts or images, noise, timesteps) before and after: a noise-free progress figure
        "fixed_batch_loss": fixed,
        "setup_time_s": timing["setup_s"],
        "wall_time_s": timing["loop_s"],  # the steps alone
        "steps_per_s": (cfg.steps - start) / timing["loop_s"] if timing["loop_s"] > 0 else None,
        "peak_memory_mb": _peak_memory_mb(acc.device),
        "processes": acc.num_processes,
        "vector_norms": {k: v.norm(dim=1).tolist() for k, v in final.items()},
        "vocab_mean_norm": {k: vocab_norm(pipe, family.encoder(k)) for k in final},
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
    }
    soft.metadata = {
        "name": cfg.name or cfg.out_path.stem,
        "family": family.name,
        "objective": "text" if cfg.mode == "text" else "image",
        "steps": str(cfg.steps),
        "target": cfg.target or "",
        "base_model": cfg.model,
        "trained_encoders": ",".join(run.vectors),
        "loss": cfg.loss if cfg.mode == "text" else "denoising",
        "loss_last": f"{losses[-1]:.6g}",
    }
    report = cfg.out_path.with_name(cfg.out_path.stem + ".report.json")
    if acc.is_main_process:
        if cfg.mode == "text":
            probe = obj.Probe.make(pipe, family, cfg.eval_samples, cfg.probe_size, seed=12345)
            metrics["distance"] = obj.distance_report(pipe, family, "".join(run.tokens), cfg.target, cfg.vectors, probe)
            for where in ("alone", "composed"):
                for ratio in ("ratio_to_first_n_words", "ratio_to_empty"):
                    soft.metadata[f"{where}_{ratio}"] = f"{metrics['distance'][where][ratio]:.4g}"
        cfg.out_path.parent.mkdir(parents=True, exist_ok=True)
        soft.save(cfg.out_path)
        write_json(report, metrics)
        checkpoint_path(cfg.out_path).unlink(missing_ok=True)  # the finished file supersedes the checkpoint
    acc.wait_for_everyone()
    return TrainResult(cfg.out_path, report, metrics)


def _fixed_batch_loss(objective, accelerator) -> float:
    with torch.no_grad(), accelerator.autocast():
        return objective.loss(torch.Generator().manual_seed(777)).item()


def _validate(pipe, cfg: TrainConfig, soft_text: str, step: int) -> None:
    """A small grid of the validation prompts at fixed seeds, next to the checkpoints."""
    from .generate import run_grid

    prompts = [p.replace("{}", soft_text) for p in cfg.validation_prompts] or (
        [obj.join(soft_text, "mountain view"), obj.join(cfg.target, "mountain view")]
        if cfg.mode == "text"
        else [f"a photo of {soft_text}"]
    )
    folder = cfg.out_path.with_name(cfg.out_path.stem + ".validation")
    folder.mkdir(parents=True, exist_ok=True)
    size = min(cfg.resolution, 512)
    device = pipe.text_encoder.device  # parked parts come back for the grid
    with moved_to(pipe, ["vae", detect_family(pipe).denoiser], device):
        run_grid(
            pipe,
            prompts,
            cfg.validation_seeds,
            steps=20,
            guidance=5.0,
            height=size,
            width=size,
            model_name=cfg.model,
            out=folder / f"step_{step:06d}.png",
            progress=False,
        )
