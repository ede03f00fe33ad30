"""Train the toy world's StableDiffusionPipeline from scratch on rendered scenes; write a diffusers folder.

    python scripts/train_toyworld.py                       # -> sd_softprompt/models/toyworld/model (safetensors)
    python scripts/train_toyworld.py --vae-steps 20 --steps 20 --out /tmp/tw-smoke   # end-to-end smoke run
    # the styled world (docs/toyworld.md, not shipped yet): the first model, trained on on styles and written
    # prompts (tried: 1600 steps, then resumed with --steps 3200 --lr 8e-4; the styles were not learnt by 2200)
    python scripts/train_toyworld.py --init-from sd_softprompt/models/toyworld/model --out /tmp/toyworld-styled \
        --work .toyworld-work-2 --styled 0.3 --written 0.5 --vae-steps 200 --steps 1600 --lr 4e-4 --restarts '' --seed 1

Stages, each resumable from its last checkpoint in --work (rerun the same command after a stop):
1. AutoencoderKL on 32 px crops of renders (all convolutions, so it then runs on 64 px: 32x32x4 latents);
2. the dataset's latents, encoded once (posterior means), and the VAE scaling factor (1 / their std);
3. CLIPTextModel + UNet2DConditionModel jointly, DDPM epsilon loss, 10% empty captions (for guidance),
   an exponential moving average of the weights, which is what ships.
With --init-from, every stage starts from a folder this script wrote: the VAE trains on (its scaling factor is
kept, so the UNet's latents keep their scale), the text encoder's embeddings are carried over word by word
(the vocabulary only grew), and the captions become a mix of the short phrasings and written prompts.
Same seed, same figures: data order and noise come from generators seeded by (seed, stage, step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.models.toyworld import model as toy  # noqa: E402
from sd_softprompt.models.toyworld.world import (  # noqa: E402
    HELD_OUT,
    UNNAMED,
    caption,
    random_scene,
    render_array,
    short_caption,
    written_prompt,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(toy.MODEL_DIR), help="where the diffusers folder goes")
    p.add_argument("--work", default=".toyworld-work", help="checkpoints and cached latents (resume from here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=8000, help="rendered training pictures")
    p.add_argument("--vae-steps", type=int, default=300)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5000, help="text encoder + UNet steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument(
        "--restarts",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[400, 1200, 3000],
        help="steps at which the cosine schedule starts again (comma-separated; '' for none). The default "
        "replays the shipped model's history, a --work folder resumed with --steps 400, 1200, 3000, 5000, so that "
        "a run from scratch takes the same learning rates step by step",
    )
    p.add_argument("--empty", type=float, default=0.1, help="share of empty captions")
    p.add_argument(
        "--styled", type=float, default=0.0, help="chance that a picture's medium, and apart its light, is not plain"
    )
    p.add_argument(
        "--written",
        type=float,
        default=0.0,
        help="share of captions written as people write prompts (world.written_prompt); a styled scene always is",
    )
    p.add_argument("--init-from", help="a folder this script wrote: train on from its weights")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--export", action="store_true", help="write the folder from the last checkpoint, train no more")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- data
def dataset(n: int, seed: int, styled: float = 0.0):
    """n (scene, picture) pairs; the held-out scenes and the unnamed combination never appear, in any style."""
    rng = random.Random(seed)
    exclude = frozenset(HELD_OUT) | {UNNAMED}
    scenes = [random_scene(rng, exclude, styled) for _ in range(n)]
    pixels = np.stack([render_array(s, seed * 1_000_003 + i) for i, s in enumerate(scenes)])
    return scenes, torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.exists() else None


# ---------------------------------------------------------------- stage 1: the VAE
def text_of(args, scene, rng: random.Random) -> str:
    """A training caption: empty, a short phrasing or a written prompt. With --styled, the short phrasings
    name the style too (short_caption: "painting of" then means the painting medium, not the plain look)."""
    if rng.random() < args.empty:
        return ""
    # (no draw for --written 0: a run with the first model's arguments takes the same numbers as it did)
    if args.written > 0 and rng.random() < args.written:
        return written_prompt(scene, rng)
    return short_caption(scene, rng) if args.styled else caption(scene, rng)


def initial(args, tokenizer):
    """The starting weights: new ones, or --init-from's with the text encoder's rows carried over by token."""
    if not args.init_from:
        return toy.vae(), toy.text_encoder(len(tokenizer)), toy.unet(), None
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(args.init_from)
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    old_text = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    old_vocab = CLIPTokenizer.from_pretrained(folder / "tokenizer").get_vocab()
    text_encoder = toy.text_encoder(len(tokenizer))
    state = old_text.state_dict()
    old_rows = state.pop(next(k for k in state if k.endswith("token_embedding.weight")))
    missing, unexpected = text_encoder.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("token_embedding.weight") for k in missing), (missing, unexpected)
    rows = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        # new words start at the old rows' mean, apart by a little noise; known words keep their rows
        g = torch.Generator().manual_seed(args.seed)
        rows.copy_(old_rows.mean(0) + 0.1 * old_rows.std() * torch.randn(rows.shape, generator=g))
        for token, i in tokenizer.get_vocab().items():
            if token in old_vocab:
                rows[i] = old_rows[old_vocab[token]]
    return vae, text_encoder, unet, float(vae.config.scaling_factor)


def train_vae(args, pixels: torch.Tensor, work: Path, vae):
    # from --init-from, gently: the UNet it goes with reads its latents
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-4 if args.init_from else 1e-3, weight_decay=0.0)
    path, start = work / "vae.pt", 0
    if (ckpt := load_checkpoint(path)) is not None:
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = ckpt["step"]
    vae.train()
    end = start if args.export and start else args.vae_steps
    bar = tqdm(range(start, end), initial=start, total=end, desc="vae", mininterval=5)
    for step in bar:
        g = torch.Generator().manual_seed(args.seed * 7919 + step)
        idx = torch.randint(len(pixels), (args.vae_batch,), generator=g)
        ox, oy = torch.randint(0, 33, (2,), generator=g).tolist()
        x = pixels[idx, :, oy : oy + 32, ox : ox + 32]
        posterior = vae.encode(x).latent_dist
        # the posterior mean, as an autoencoder: sampling at the initial variance (std 1) drowns the
        # colours for hundreds of steps, and the diffusion model is trained on the means anyway
        recon = vae.decode(posterior.mean).sample
        rec = F.mse_loss(recon, x)
        loss = rec + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(mse=f"{rec.item():.4f}")
        if (step + 1) % args.every == 0 or step + 1 == args.vae_steps:
            save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, path)
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, work: Path, scaling: float | None) -> tuple[torch.Tensor, float]:
    path = work / "latents.pt"
    if (cached := load_checkpoint(path)) is not None:
        return cached["latents"], float(cached["scaling"])
    means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in tqdm(pixels.split(256), desc="latents")])
    scaling = float(1.0 / means.std()) if scaling is None else scaling
    save_atomic({"latents": means, "scaling": torch.tensor(scaling)}, path)
    return means, scaling


# ---------------------------------------------------------------- stage 3: text encoder + UNet
def learning_rate(args, step: int) -> float:
    """Linear warm-up, then a cosine from lr to 0.1 lr ending at the segment's last step; each restart begins
    a segment, as resuming with a larger --steps did (so a resumed run and a run from scratch agree)."""
    ends = sorted(r for r in args.restarts if 0 < r < args.steps) + [args.steps]
    segment_end = next(e for e in ends if step < e)
    warmup = min(100, segment_end // 10 + 1)
    return args.lr * min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / segment_end))


def train_denoiser(args, scenes, latents: torch.Tensor, scaling: float, tokenizer, work: Path, text_encoder, unet):
    params = list(text_encoder.parameters()) + list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = toy.train_scheduler()
    path, start = work / "denoiser.pt", 0
    if (ckpt := load_checkpoint(path)) is not None:
        text_encoder.load_state_dict(ckpt["text_encoder"])
        unet.load_state_dict(ckpt["unet"])
        opt.load_state_dict(ckpt["opt"])
        ema = list(ckpt["ema"])
        start = ckpt["step"]
    text_encoder.train()
    unet.train()
    alphas = scheduler.alphas_cumprod
    end = start if args.export else args.steps
    bar = tqdm(range(start, end), initial=start, total=end, desc="text encoder + unet", mininterval=5)
    for step in bar:
        lr = learning_rate(args, step)
        for group in opt.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(args.seed * 104729 + step)
        rng = random.Random(args.seed * 104729 + step)
        idx = torch.randint(len(latents), (args.batch,), generator=g)
        texts = [text_of(args, scenes[i], rng) for i in idx.tolist()]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        z0 = latents[idx] * scaling
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        states = text_encoder(ids.input_ids)[0]
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=states).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}")
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            state = {"text_encoder": text_encoder.state_dict(), "unet": unet.state_dict(), "opt": opt.state_dict()}
            save_atomic({**state, "ema": ema, "step": step + 1}, path)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    return text_encoder.eval(), unet.eval()


def write_pipeline(out: Path, tokenizer, text_encoder, unet, vae, scaling: float, info: dict) -> None:
    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=toy.sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(torch.float16)
    # The text encoder in fp32 (0.66 MB): transformers >= 5 loads the stored dtype, diffusers its models in fp32,
    # so a plain DiffusionPipeline.from_pretrained(folder) must find both in fp32 (and textual-inversion
    # scripts train that table in place). The UNet and VAE stay fp16 on disk; every loader widens them.
    pipe.text_encoder.to(torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "toyworld.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    scenes, pixels = dataset(args.images, args.seed, args.styled)
    tokenizer = toy.tokenizer()
    vae, text_encoder, unet, scaling = initial(args, tokenizer)
    vae = train_vae(args, pixels, work, vae)
    latents, scaling = encode_latents(vae, pixels, work, scaling)
    text_encoder, unet = train_denoiser(args, scenes, latents, scaling, tokenizer, work, text_encoder, unet)
    wall = round(time.time() - started, 1)
    info = {
        "trained_by": "scripts/train_toyworld.py",
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "work", "init_from")},
        "wall_seconds_this_run": wall,
        "torch": torch.__version__,
    }
    if args.init_from and (earlier := Path(args.init_from) / "toyworld.json").is_file():
        info["trained_on_from"] = json.loads(earlier.read_text("utf-8"))
    write_pipeline(Path(args.out), tokenizer, text_encoder, unet, vae, scaling, info)
    print(f"wrote {args.out} ({wall} s this run)")


if __name__ == "__main__":
    main()
