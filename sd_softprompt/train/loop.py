"""The training loop, its step and its learning-rate schedule, on one screen.

Only the N x width soft vectors learn (AdamW over them alone); the objective (objectives.py) gives each step's
loss. Losses stay on the device and are read back every READ_EVERY steps and before anything is written, so a
non-finite loss is caught before a checkpoint could keep it. The set-up and the final measure are trainer.py's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..errors import TrainingDiverged, WriteError
from ..families import Family
from .checkpoints import checkpoint_path, load_checkpoint, restore, save_checkpoint_or_warn
from .config import TrainConfig
from .objectives import OBJECTIVES
from .rows import moved_to, trainable_rows, vocab_norm
from .tracking import log_steps

StepHook = Callable[[int], AbstractContextManager]


@dataclass
class Run:
    """What the loop works on, set up once."""

    accelerator: object
    pipe: object
    family: Family
    tokens: list[str]
    init: dict[str, torch.Tensor]  # initial vectors of every encoder
    vectors: dict[str, torch.nn.Parameter]  # the trained ones, fp32
    log: object


@dataclass
class LoopResult:
    """What the loop hands to the final measure and report."""

    losses: list[float]  # one per step, this run's and a resumed checkpoint's
    fixed_batch_loss: dict[str, float]  # "before"/"after": the same batch, a noise-free progress figure
    setup_s: float  # frozen targets, target pool or VAE latents, once
    loop_s: float  # the steps alone
    first_step: int  # 0, or the step a checkpoint resumed at
    objective: object  # the TextObjective / ImageObjective trained


# ---------------------------------------------------------------- the schedule
def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """LR multiplier: linear warm-up, then constant or cosine decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- the step
def optimizer_step(cfg, step: int, objective, optimizer, scheduler, vectors: dict, norms: dict, acc) -> torch.Tensor:
    """One optimizer step (`cfg.grad_accum` losses); its loss, on the device (not read back)."""
    # One generator per (seed, step, rank): resuming needs no RNG state beyond the step.
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 4_099 + acc.process_index)
    total = None
    for _ in range(cfg.grad_accum):
        with acc.autocast():
            loss = objective.loss(g)
            if cfg.norm_weight > 0:  # keep norms near the vocabulary's, so the vectors don't drown the prompt
                loss = loss + cfg.norm_weight * sum(
                    ((v.norm(dim=1) - norms[k]) / norms[k]).pow(2).mean() for k, v in vectors.items()
                )
        with record_function("backward"):
            acc.backward(loss / cfg.grad_accum)
        part = loss.detach().float() / cfg.grad_accum
        total = part if total is None else total + part
    with record_function("optimizer"):
        for v in vectors.values():  # data parallel without DDP: average the few N x width gradients by hand
            v.grad = acc.reduce(v.grad, reduction="mean")
        # A non-finite loss makes the vectors non-finite here; the loop stops before anything is written.
        acc.clip_grad_norm_(list(vectors.values()), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return total


READ_EVERY = 10  # steps between host syncs (and progress-bar updates) when nothing else asks for one


class StepLosses:
    """The losses of the steps run so far: `values` (read back) and those still on the device."""

    def __init__(self, values: list[float]):
        self.values = values
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, loss)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self._pending.append((step, loss.detach()))

    def read(self) -> tuple[int, float] | None:
        """Read the pending losses back (one host sync); the first non-finite one as (step, value), else None."""
        if not self._pending:
            return None
        with record_function("host sync"):
            read = torch.stack([v.float().reshape(()) for _, v in self._pending]).tolist()
        steps = [s for s, _ in self._pending]
        self._pending = []
        for step, value in zip(steps, read):
            if not math.isfinite(value):
                return step, value
            self.values.append(value)
        return None


# ---------------------------------------------------------------- the loop
def unused_in_loop(cfg: TrainConfig, family: Family) -> list[str]:
    """Frozen parts the training steps never run: the VAE once latents are cached (or always, in text
    mode), and the denoiser unless the objective needs it (it comes back for the final measure)."""
    names = ["vae"]
    if not OBJECTIVES[cfg.mode].needs_denoiser(cfg):
        names.append(family.denoiser)
    return names


def run_loop(cfg: TrainConfig, run: Run, around_step: StepHook, draw_validation: Callable[[int], None]) -> LoopResult:
    """The training loop: `cfg.steps` optimizer steps on the objective, checkpoints and validation grids on the way."""
    acc, vectors = run.accelerator, run.vectors
    norms = {k: vocab_norm(run.pipe, run.family.encoder(k)) for k in vectors}
    ckpt = checkpoint_path(cfg.out_path)
    optimizer = torch.optim.AdamW(vectors.values(), lr=cfg.lr, weight_decay=0.0)
    start, losses = 0, []
    if cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt, cfg)
        restore(ckpt, state, vectors, optimizer)
        for group in optimizer.param_groups:  # the checkpoint's own rate would silently win over a new --lr
            group["lr"] = group["initial_lr"] = cfg.lr
        start, losses = state["step"], list(state["losses"])
        run.log(f"resuming from {ckpt} at step {start}")
    elif cfg.resume:
        run.log(f"no checkpoint at {ckpt}: starting from step 0")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup, cfg.schedule), last_epoch=start - 1
    )
    # Only the optimizer goes through accelerate (fp16 loss scaling): a prepared scheduler would step once
    # per process, and there is no model to wrap, gradients are averaged by hand below.
    optimizer = acc.prepare(optimizer)

    with trainable_rows(run.pipe, run.family, run.tokens, vectors), ExitStack() as stack:
        t0 = time.perf_counter()
        objective = OBJECTIVES[cfg.mode](run.pipe, run.family, cfg, run.tokens, run.log)
        stack.enter_context(moved_to(run.pipe, unused_in_loop(cfg, run.family) if cfg.offload else []))
        fixed = {"before": fixed_batch_loss(objective, acc)}
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bar = tqdm(
            range(start, cfg.steps),
            initial=start,
            total=cfg.steps,
            disable=not (acc.is_main_process and cfg.progress),
            desc="train",
        )
        log = StepLosses(losses)
        for step in bar:
            with around_step(step):
                log.add(step, optimizer_step(cfg, step, objective, optimizer, scheduler, vectors, norms, acc))
            done = step + 1
            # The last step too: if the soft prompt and report cannot be written, --resume goes straight to them.
            due = done % cfg.checkpoint_every == 0 or done == cfg.steps if cfg.checkpoint_every else False
            validate = cfg.validate_every and done % cfg.validate_every == 0
            if due or validate or done % READ_EVERY == 0 or done == cfg.steps:  # before anything is written
                read_from = len(losses)
                bad = log.read()
                if bad:
                    kept = f"; the last good checkpoint is {ckpt} (add --resume)" if ckpt.exists() else ""
                    raise TrainingDiverged(
                        f"step {bad[0] + 1}: the loss is {bad[1]}; lower --lr or use --mixed-precision no{kept}"
                    )
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                log_steps(acc, losses, read_from, scheduler.get_last_lr()[0], vectors)  # --log-with
            if acc.is_main_process and due:
                save_checkpoint_or_warn(ckpt, cfg, done, vectors, optimizer, losses, run.log)
            if acc.is_main_process and validate:
                try:
                    draw_validation(done)
                except WriteError as error:  # a picture for the user, not worth stopping the run for
                    run.log(f"warning: step {done}: {error}; training goes on")
        bar.close()
        loop_s = time.perf_counter() - t0
        fixed["after"] = fixed_batch_loss(objective, acc)
    return LoopResult(losses, fixed, setup_s, loop_s, start, objective)


def fixed_batch_loss(objective, accelerator) -> float:
    with torch.no_grad(), accelerator.autocast():
        return objective.loss(torch.Generator().manual_seed(777)).item()
