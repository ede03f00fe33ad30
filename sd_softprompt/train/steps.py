"""One optimizer step, and the step losses kept on the device until they are read back.

Reading a loss (`loss.item()`) waits for every queued kernel: on a GPU, a read each step stalls the host
(tokenizer, data) until the device is idle. The losses are read back together every few steps and before
anything is written (checkpoint, validation grid, the end), so the NaN guard still keeps the last good
checkpoint: a checkpoint is only written once every loss before it is known to be finite.
"""

from __future__ import annotations

import math

import torch
from torch.profiler import record_function

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
