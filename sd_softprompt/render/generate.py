"""Images from a pipeline: one image, or a labelled prompt x seed grid with a JSON record beside it.

Every image is drawn from a torch.Generator on the CPU seeded with its seed, so a seed gives the same
starting noise on any device, and a grid cell is exactly what `generate` gives for its prompt and seed.
Files are written to a temp file beside the target and renamed, so nothing is ever half-written.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..families import Family, detect_family, size_rule
from ..files.atomic import atomic_write, bytes_writer
from ..files.softprompt import SoftPrompt
from ..inject.loader import assign_encoders, load_soft_prompt, load_soft_prompts, loaded_tokens, unload_soft_prompt
from .grid import make_grid
from .scoring import Reference, Scorer, score_rows
from .weighting import check_weighting, weighted_call

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes at most 64 bits


def default_guidance(pipe, family: Family | None = None) -> float:
    """The pipeline's usual guidance scale (Flux dev: distilled guidance, not classifier-free)."""
    return (family or detect_family(pipe)).guidance


def generate(
    pipe,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    height: int | None,
    width: int | None,
    negative_prompt: str | None = None,
    family: Family | None = None,
    weighting: str | None = None,
) -> Image.Image:
    """One image from the pipeline's own __call__; ``height``/``width`` None means the model's default.
    ``family``: the pipeline's, when the caller has it already (else detected). ``weighting``: "a1111" or
    "comfyui" reads ``(words:1.2)`` in the prompts as that tool does (render/weighting.py); None passes them
    to the pipeline as they are."""
    return generate_batch(pipe, prompt, [seed], steps, guidance, height, width, negative_prompt, family, weighting)[0]


def generate_batch(
    pipe,
    prompt: str,
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    height: int | None,
    width: int | None,
    negative_prompt: str | None = None,
    family: Family | None = None,
    weighting: str | None = None,
) -> list[Image.Image]:
    """One image per seed in a single pipeline call. Each image has its own generator, so image k starts
    from the noise `generate` would draw with seeds[k] (on this CPU the pixels match exactly; a GPU may
    differ in rounding), and one batched call costs far less than len(seeds) calls on a GPU."""
    family = family or detect_family(pipe)
    if (height is None) != (width is None):  # the pipelines drop a lone side for their default square
        height, width = height or family.native_size(pipe), width or family.native_size(pipe)
    _check_settings(pipe, family, steps, guidance, height, width, seeds)
    kwargs = dict(
        prompt=prompt,
        num_inference_steps=steps,
        height=height,
        width=width,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
    )
    kwargs[family.guidance_arg] = guidance  # guidance_scale; Qwen-Image: true_cfg_scale
    if weighting is None:
        kwargs.update(family.call_kwargs(pipe, negative_prompt))
    else:
        kwargs.update(weighted_call(pipe, family, prompt, negative_prompt, weighting))
    with torch.inference_mode():
        return pipe(**kwargs).images


def _check_settings(
    pipe, family: Family, steps: int, guidance: float, height: int | None, width: int | None, seeds: Sequence[int]
) -> None:
    if steps < 1:
        raise ConfigError(f"--steps {steps}: need at least 1 inference step")
    bad_seeds = [s for s in seeds if not isinstance(s, int) or not 0 <= s <= MAX_SEED]
    if bad_seeds:
        raise ConfigError(f"seed {bad_seeds[0]}: seeds are whole numbers from 0 to {MAX_SEED} (torch's 64 bits)")
    if not math.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"--guidance {guidance}: need a finite scale of 0 or more (default {family.guidance})")
    multiple, largest = size_rule(pipe, family)  # what the pipeline itself checks, and its position tables
    for name, size in (("height", height), ("width", width)):
        if size is not None and (size < multiple or size % multiple):
            lower = max(multiple, size - size % multiple)
            raise ConfigError(
                f"--{name} {size}: {family.title} needs a multiple of {multiple}; try {lower} or {lower + multiple}"
            )
        if size is not None and largest is not None and size > largest:
            raise ConfigError(
                f"--{name} {size}: this {family.title} model draws at most {largest} px a side "
                f"(its position tables end there); try {largest} or less"
            )
    _check_memory(pipe, family, height, width, len(seeds))


def _check_memory(pipe, family: Family, height: int | None, width: int | None, images: int) -> None:
    """Refuse a size that cannot fit before drawing (an allocator error after minutes otherwise). The need is a
    lower bound: one activation of the VAE decoder at full size (its widest stage's channels x the pixels), for
    every picture decoded at once; what is free is the device's free memory (with torch's cache) or RAM."""
    height, width = height or family.native_size(pipe), width or family.native_size(pipe)
    vae = pipe.vae
    channels = vae.config.get("block_out_channels") or vae.config.get("decoder_block_out_channels") or (3,)
    at_once = 1 if getattr(vae, "use_slicing", False) else images
    need = at_once * min(channels) * height * width * torch.finfo(vae.dtype).bits // 8
    device = torch.device(getattr(pipe, "_execution_device", None) or pipe.device)
    free = _free_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"--height {height} --width {width}: decoding {at_once} picture(s) of that size needs at least "
            f"{_gib(need)} on {device}, which has {_gib(free)} free; draw smaller pictures or fewer seeds"
        )


def _free_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device (counting torch's cached blocks) or in RAM (MemAvailable); None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GB" if size >= 2**30 else f"{size / 2**20:.3g} MB"


def run_grid(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int,
    guidance: float,
    height: int | None,
    width: int | None,
    model_name: str,
    out: Path,
    negative_prompt: str | None | Sequence[str | None] = None,
    soft_files: Sequence[str] = (),
    progress: bool = True,
    family: Family | None = None,
    labels: Sequence[str] | None = None,
    drawn: Mapping[str, Sequence[Image.Image]] | None = None,
    scorer: Scorer | None = None,
    reference: Reference | None = None,
    weighting: str | None = None,
    before_row: Callable[[int], None] | None = None,
    extra: Mapping | None = None,
) -> tuple[Path, Path]:
    """Draw every prompt (rows) with every seed (columns); write the labelled grid and ``<stem>.json``.

    ``negative_prompt``: one for every row, or a list with one per row (rows that compare negatives);
    ``labels``: row labels (default: the prompts); ``drawn``: pictures already drawn with these seeds,
    steps, guidance and size, by prompt (rows without a negative prompt reuse them instead of drawing);
    ``scorer`` + ``reference``: score each row's pictures (``scoring.score_rows``) into the record's ``scores``;
    ``weighting``: see `generate`; ``before_row(i)``: called before row i is drawn (e.g. to load other vectors);
    ``extra``: more fields for the record."""
    if not prompts or not seeds:
        raise ConfigError("a grid needs at least one prompt and one seed")
    if (scorer is None) != (reference is None):
        raise ConfigError("scoring a grid needs both a scorer and a reference (or neither)")
    negatives = (
        list(negative_prompt) if isinstance(negative_prompt, (list, tuple)) else [negative_prompt] * len(prompts)
    )
    if len(negatives) != len(prompts) or (labels is not None and len(labels) != len(prompts)):
        raise ConfigError(f"a grid of {len(prompts)} rows needs as many negative prompts and labels")
    target = image_path(grid_target(Path(out)))
    family = family or detect_family(pipe)
    if weighting is not None:
        check_weighting(family, weighting)  # before the first row is drawn

    started = time.perf_counter()
    rows: list[list[Image.Image]] = []
    seconds: list[float] = []
    reused = [
        drawn is not None and negative is None and prompt in drawn for prompt, negative in zip(prompts, negatives)
    ]
    to_draw = (len(prompts) - sum(reused)) * len(seeds)  # the bar counts (and times) only pictures drawn here
    with tqdm(total=to_draw, desc="grid", unit="image", disable=not progress or not to_draw) as bar:
        for row, (prompt, negative, again) in enumerate(zip(prompts, negatives, reused)):  # one call per row
            if before_row is not None:
                before_row(row)
            tick = time.perf_counter()
            if again:
                rows.append(list(drawn[prompt]))
            else:
                rows.append(
                    generate_batch(pipe, prompt, seeds, steps, guidance, height, width, negative, family, weighting)
                )
                bar.update(len(seeds))
            seconds.append(round(time.perf_counter() - tick, 3))

    cell_w, cell_h = rows[0][0].size
    caption = grid_caption(model_name, steps, guidance, cell_h, cell_w)
    grid = make_grid(rows, list(labels or prompts), [f"seed {seed}" for seed in seeds], caption)
    record = _record(pipe, family, model_name, list(prompts), seeds, steps, guidance, cell_h, cell_w, soft_files)
    record["negative_prompt"] = negative_prompt if isinstance(negative_prompt, (str, type(None))) else negatives
    record["timings"] = {
        "total_s": round(time.perf_counter() - started, 3),
        "per_row_s": seconds,  # one batched call per row
    }
    if weighting is not None:
        record["weighting"] = weighting
    record.update(extra or {})
    if scorer is not None:
        record["scores"] = _scores_record(rows, list(prompts), scorer, reference)
    return _write_grid(target, grid, record)


def _scores_record(rows: list[list[Image.Image]], prompts: list[str], scorer: Scorer, reference: Reference) -> dict:
    """The grid record's ``scores``: what was scored against, then one entry per row (its prompt and scores)."""
    # The Scorer protocol asks only for score(); a scorer's name, when it has one, says which model scored.
    entry = {
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "reference_prompt": reference.prompt,
        "reference_images": len(reference.images),
    }
    if reference.attributes:  # the toy judge's reference
        entry["reference_attributes"] = list(reference.attributes)
    entry["rows"] = [{"prompt": p, **s} for p, s in zip(prompts, score_rows(rows, reference, scorer))]
    return entry


def _record(pipe, family, model_name, prompts, seeds, steps, guidance, height, width, soft_files) -> dict:
    """What every grid's JSON record says about how it was drawn (callers add their own fields)."""
    return {
        "model": model_name,
        "family": family.name,
        "prompts": prompts,
        "seeds": list(seeds),
        "steps": steps,
        "guidance": guidance,
        "height": height,
        "width": width,
        "soft_tokens": loaded_tokens(pipe),
        "soft_prompt_files": [str(path) for path in soft_files],
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "version": _version(),
    }


def _write_grid(target: Path, grid: Image.Image, record: dict) -> tuple[Path, Path]:
    """The grid image and its JSON record, both complete before either is renamed into place."""
    json_path = target.with_suffix(".json")
    atomic_write(
        [
            (target, bytes_writer(_image_bytes(grid, target))),
            (json_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")),
        ]
    )
    return target, json_path


def run_interpolation(
    pipe,
    a: SoftPrompt | str | Path,
    b: SoftPrompt | str | Path,
    prompt: str,
    seeds: list[int],
    points: int,
    *,
    steps: int,
    guidance: float,
    height: int | None,
    width: int | None,
    model_name: str,
    out: Path,
    negative_prompt: str | None = None,
    soft_files: Sequence[str] = (),
    progress: bool = True,
    family: Family | None = None,
    weighting: str | None = None,
) -> tuple[Path, Path]:
    """A row per seed, `points` columns from soft prompt `a` (t=0) to `b` (t=1): weights (1 - t, t).

    Each point is loaded under `a`'s tokens (which `prompt` must use) and drawn with the same seeds, so
    a column differs from the next only by the vectors. The tokens are unloaded afterwards.
    """
    from ..files.mixing import interpolate

    if points < 2:
        raise ConfigError(f"--interpolate-steps {points}: need at least 2 columns (A and B)")
    if not seeds:
        raise ConfigError("a grid needs at least one seed")
    target = image_path(grid_target(Path(out)))
    family = family or detect_family(pipe)
    names = [(x.origin or f"<memory>: {x.name}") if isinstance(x, SoftPrompt) else str(x) for x in (a, b)]
    a, b = (x if isinstance(x, SoftPrompt) else SoftPrompt.load(x) for x in (a, b))  # read each file once
    tokens = list(interpolate(a, b, 0.0).tokens)
    if not any(token in prompt for token in tokens):
        raise ConfigError(
            f"--prompt {prompt!r} uses none of A's tokens {tokens}; every column would be the same picture: "
            f"put them in the prompt, e.g. {''.join(tokens)!r} + your words"
        )
    if set(tokens) & set(loaded_tokens(pipe)):
        raise ConfigError(f"A's tokens {tokens} are already loaded from another file; rename that file's tokens")
    ts = [round(i / (points - 1), 6) for i in range(points)]
    started = time.perf_counter()
    columns: list[list[Image.Image]] = []
    try:
        with tqdm(total=points * len(seeds), desc="interpolate", unit="image", disable=not progress) as bar:
            for t in ts:
                load_soft_prompt(pipe, interpolate(a, b, t), tokens=tokens, replace=True, family=family)
                columns.append(
                    generate_batch(
                        pipe, prompt, seeds, steps, guidance, height, width, negative_prompt, family, weighting
                    )
                )
                bar.update(len(seeds))
    finally:
        if set(tokens) <= set(loaded_tokens(pipe)):
            unload_soft_prompt(pipe, tokens, family=family)
    rows = [[column[i] for column in columns] for i in range(len(seeds))]
    cell_w, cell_h = rows[0][0].size
    caption = f"{prompt} · A = {names[0]} → B = {names[1]} · " + grid_caption(
        model_name, steps, guidance, cell_h, cell_w
    )
    labels = [f"t={t:g}" + (" (A)" if t == 0 else " (B)" if t == 1 else "") for t in ts]
    grid = make_grid(rows, [f"seed {seed}" for seed in seeds], labels, caption)
    record = _record(pipe, family, model_name, [prompt], seeds, steps, guidance, cell_h, cell_w, soft_files)
    record["interpolate"] = {"a": names[0], "b": names[1], "t": ts, "tokens": tokens, "weights": "(1 - t, t)"}
    record["negative_prompt"] = negative_prompt
    record["timings"] = {"total_s": round(time.perf_counter() - started, 3)}
    if weighting is not None:
        record["weighting"] = weighting
    return _write_grid(target, grid, record)


def encoder_subsets(keys: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset of `keys`: all of them first, then smaller ones (in `keys` order), the empty one last."""
    keys = list(dict.fromkeys(keys))
    return [s for n in range(len(keys), -1, -1) for s in itertools.combinations(keys, n)]


def run_encoder_grid(
    pipe,
    softs: Sequence[SoftPrompt],
    prompt: str,
    seeds: list[int],
    *,
    tokens: Sequence[Sequence[str] | None] | None = None,
    compare: Sequence[str] = (),
    family: Family | None = None,
    **grid,
) -> tuple[Path, Path]:
    """A row per subset of the soft prompts' encoders: `prompt` drawn with only those encoders' vectors loaded
    (the other encoders hold the soft tokens as zero rows, see `load_soft_prompt(encoders=)`), every encoder
    first, each smaller set, then none; then the `compare` rows, with every vector loaded. So a grid shows what
    each encoder's vectors do (Flux: whether the T5 half changes anything). `tokens[i]`: soft prompt i's token
    names (default its own). The soft prompts are left loaded with every vector. `grid`: `run_grid`'s keywords."""
    family = family or detect_family(pipe)
    softs = list(softs)
    names = list(tokens) if tokens is not None else [None] * len(softs)
    has = [[encoder.key for encoder, _ in assign_encoders(pipe, family, soft, soft.name)] for soft in softs]
    subsets = encoder_subsets([key for key in family.keys if any(key in h for h in has)])

    def load(row: int) -> None:
        keys = subsets[row] if row < len(subsets) else None
        chosen = None if keys is None else [[k for k in keys if k in h] for h in has]
        load_soft_prompts(pipe, softs, names, replace=True, family=family, encoders=chosen)

    labels = [f"{prompt} | vectors: {' + '.join(s) if s else 'none'}" for s in subsets] + list(compare)
    try:
        return run_grid(
            pipe,
            [prompt] * len(subsets) + list(compare),
            seeds,
            family=family,
            labels=labels,
            before_row=load,
            extra={"per_encoder": [list(s) for s in subsets] + [None] * len(compare)},
            **grid,
        )
    finally:
        load(len(subsets))  # every vector, as before


def grid_caption(model_name: str, steps: int, guidance: float, height: int, width: int) -> str:
    return f"{model_name} · {steps} steps · guidance {guidance:g} · {width}x{height}"


def grid_target(out: Path) -> Path:
    """An existing folder gets grid.png inside it."""
    return out / "grid.png" if out.is_dir() else out


def save_image(image: Image.Image, out: Path) -> Path:
    """Write one image atomically, in the format its suffix names (PNG when it has none)."""
    target = image_path(Path(out))
    atomic_write([(target, bytes_writer(_image_bytes(image, target)))])
    return target


def image_path(out: Path) -> Path:
    """``out`` with .png added when it has no suffix; ConfigError for a suffix Pillow cannot write."""
    target = out if out.suffix else out.with_suffix(".png")
    _image_format(target)
    return target


def _image_bytes(image: Image.Image, target: Path) -> bytes:
    """The encoded image, in memory first (as every writer here: see atomic.py)."""
    buffer = io.BytesIO()
    image.save(buffer, format=_image_format(target))
    return buffer.getvalue()


def _image_format(target: Path) -> str:
    image_format = Image.registered_extensions().get(target.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:  # some formats Pillow only reads
        raise ConfigError(f"{target}: {target.suffix!r} is not an image format Pillow writes; use .png")
    return image_format


def _version() -> str:
    from .. import __version__

    return __version__
