"""What scripts/benchmark_train.py compares the trainer with, in the same process and on the same pipeline.

- `trainer_at(rev)`: this package's `train` as it was at a git revision, imported under another name.
- `diffusers_like_steps`: a **diffusers-script-like recipe**: the per-step work of diffusers'
  examples/textual_inversion/textual_inversion.py re-implemented here (not its code): per sample the picture
  read, resized and randomly flipped, a template filled and tokenized; per step the VAE encode of the batch (no
  latent cache), the full text encoder forward, the UNet forward and backward, AdamW (lr 5e-4, weight decay
  1e-2, constant) over the *whole* token-embedding table, then every row but the placeholder's restored, and
  the loss read back for the progress bar.
"""

from __future__ import annotations

import copy
import importlib
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sd_softprompt.train.data import load_image

REPO = Path(__file__).resolve().parent.parent
# the templates the textual-inversion scripts fill with the placeholder (imagenet_templates_small)
TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]


def trainer_at(rev: str):
    """`train`, `TrainConfig` and the objectives module of the package at git revision `rev` (extracted with git
    archive, imported under another name)."""
    name = f"sd_softprompt_{rev}"
    if name not in sys.modules:
        root = Path(tempfile.mkdtemp(prefix="sd-softprompt-ref-"))
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "sd_softprompt"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
        (root / "sd_softprompt").rename(root / name)
        sys.path.insert(0, str(root))
    module = importlib.import_module(f"{name}.train")
    return module.train, module.TrainConfig, importlib.import_module(f"{name}.objectives")


def diffusers_like_steps(
    pipe,
    images: list[Path],
    steps: int,
    batch_size: int,
    resolution: int,
    lr: float = 5e-4,
    seed: int = 0,
    probe: Callable[[int, object, str], None] | None = None,
) -> tuple[float, float]:
    """Wall and CPU seconds per step of the diffusers-script-like recipe (SD1/SD2 pipelines); the pipeline is left as it came
    (the tokenizer and text encoder are copies). `probe(step, view, placeholder)`, if given, runs after every
    step with a pipeline that reads the copies (to draw the placeholder as learned so far); its time is not
    counted."""
    tokenizer, text_encoder = copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder)
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    device, dtype = unet.device, unet.dtype
    placeholder = "<bench-concept>"
    tokenizer.add_tokens([placeholder])
    pid = tokenizer.convert_tokens_to_ids(placeholder)
    text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings()
    with torch.no_grad():
        table.weight[pid] = table.weight[tokenizer("photo", add_special_tokens=False).input_ids[0]]
    text_encoder.requires_grad_(False)
    table.weight.requires_grad_(True)
    text_encoder.train()
    optimizer = torch.optim.AdamW(table.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    original = table.weight.data.clone()
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    view = type(pipe)(**{**pipe.components, "tokenizer": tokenizer, "text_encoder": text_encoder}) if probe else None
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        pixels, ids = [], []
        for i in range(batch_size):  # the dataset's __getitem__, once per sample
            x = load_image(images[(step * batch_size + i) % len(images)], resolution)
            pixels.append(x.flip(-1) if rng.random() < 0.5 else x)
            text = rng.choice(TEMPLATES).format(placeholder)
            ids.append(
                tokenizer(text, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids[0]
            )
        with torch.no_grad():
            latents = vae.encode(torch.stack(pixels).to(device, dtype)).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(device, dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g).to(device)
        states = text_encoder(torch.stack(ids).to(device))[0].to(dtype)
        pred = unet(scheduler.add_noise(latents, noise, t), t, states).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        keep = torch.ones(len(tokenizer), dtype=torch.bool)
        keep[pid] = False
        with torch.no_grad():
            table.weight[keep] = original[keep]
        loss.detach().item()  # the progress bar's loss
        if probe is not None:  # not timed: shift the clocks' origins past it
            w, c = time.perf_counter(), time.process_time()
            probe(step + 1, view, placeholder)
            t0, c0 = t0 + time.perf_counter() - w, c0 + time.process_time() - c
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
