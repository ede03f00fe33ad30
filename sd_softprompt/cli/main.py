"""`sd-softprompt`: generate, grid, inspect, demo, convert, train. A thin layer over the Python API.

Every command runs inside one wrapper: a user error (SoftPromptError, a bad flag, or an OSError such as a
missing path, a full disk or a refused permission) prints one line, ``sd-softprompt: error: <message>``, to
stderr and returns 2; never a traceback. Ctrl-C prints one line too (what was kept, how to resume) and
returns 130, the shell's code for an interrupt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SoftPromptError, escaped, listed
from .parser import PROG, build_parser

if TYPE_CHECKING:
    from ..render.scoring import ClipScorer, Reference

_MAX_MESSAGE = 299  # a safety net: messages are written short; this keeps any one of them a short line


def main(argv: Sequence[str] | None = None) -> int:
    # Library chatter (e.g. transformers' "requires torchvision" notice on import) would bury the one line a
    # user error gets; the env variables still win if a user sets them.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0), returned rather than raised
        return exit_.code if isinstance(exit_.code, int) else 0
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return HANDLERS[args.command](args) or 0
    except SoftPromptError as error:
        return _fail(str(error))
    except OSError as error:  # a missing path, a full disk, a refused permission: the user's to fix
        return _fail(_os_message(error))
    except KeyboardInterrupt as interrupt:  # train() says what it kept and how to resume
        print(_one_line(f"{PROG}: interrupted" + (f"; {interrupt}" if str(interrupt) else "")), file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print(_one_line(f"{PROG}: error: {message}"), file=sys.stderr)
    return 2


def _one_line(message: str) -> str:
    """One line, nothing in it a terminal acts on (a file's escape codes), at most _MAX_MESSAGE characters:
    an over-long one loses its middle, so that what is wrong (the start) and the fix (the end) both survive."""
    text = escaped(" ".join(part.strip() for part in message.splitlines() if part.strip()))
    if len(text) <= _MAX_MESSAGE:
        return text
    head = _MAX_MESSAGE * 2 // 3
    return text[:head] + " ... " + text[-(_MAX_MESSAGE - head - 5) :]


def _os_message(error: OSError) -> str:
    if error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error) or type(error).__name__


# -------------------------------------------------------------------------------------- handlers
def _generate(args) -> int:
    from ..render.generate import default_guidance, generate, image_path, save_image

    out = image_path(Path(args.out))  # an unwritable suffix fails before the model loads
    pipe, family, _ = _pipeline_with_soft(args)
    _warn_overflow(pipe, family, [args.prompt], args.weighting)
    guidance = default_guidance(pipe, family) if args.guidance is None else args.guidance
    image = generate(
        pipe,
        args.prompt,
        args.seed,
        args.steps,
        guidance,
        args.height,
        args.width,
        args.negative_prompt,
        family,
        args.weighting,
    )
    print(f"wrote {save_image(image, out)}")
    return 0


def _grid(args) -> int:
    from ..render.generate import default_guidance, grid_target, image_path, run_grid

    out = image_path(grid_target(Path(args.out)))
    scorer, reference = _clip_scoring(args)  # a bad --clip-model or reference fails before the (slow) model load
    if args.interpolate:
        return _interpolation_grid(args, out)
    if args.per_encoder and not args.soft:
        raise SoftPromptError("--per-encoder draws a row per encoder of the --soft files' vectors; add --soft FILE")
    read = _read_soft(args)
    pipe, family, soft_files = _pipeline_with_soft(args, read)
    prompts = [args.prompt, *args.compare]
    _warn_overflow(pipe, family, prompts, args.weighting)
    settings = dict(
        steps=args.steps,
        guidance=default_guidance(pipe, family) if args.guidance is None else args.guidance,
        height=args.height,
        width=args.width,
        model_name=args.model,
        out=out,
        negative_prompt=args.negative_prompt,
        soft_files=soft_files,
        family=family,
        scorer=scorer,
        reference=reference,
        weighting=args.weighting,
    )
    if args.per_encoder:
        from ..render.generate import run_encoder_grid

        softs, names = read
        grid, record = run_encoder_grid(
            pipe, softs, args.prompt, args.seeds, tokens=names, compare=args.compare, **settings
        )
    else:
        grid, record = run_grid(pipe, prompts, args.seeds, **settings)
    print(f"wrote {grid}\nwrote {record}")
    if scorer is not None:  # printed from the record, so the lines say exactly what was written
        for row in json.loads(record.read_text(encoding="utf-8"))["scores"]["rows"]:
            values = "  ".join(f"{key} {value:.4f}" for key, value in row.items() if key != "prompt")
            print(f"{values}  {row['prompt']}")
    return 0


def _clip_scoring(args) -> tuple[ClipScorer, Reference] | tuple[None, None]:
    """--clip-model's scorer and its reference (prompt and/or pictures), or (None, None) without it."""
    from ..errors import ConfigError

    if args.clip_model is None:
        if args.reference_prompt is not None or args.reference_images is not None:
            raise ConfigError(
                "--reference-prompt and --reference-images are what --clip-model scores against; "
                "add --clip-model ID_OR_FOLDER (e.g. openai/clip-vit-base-patch32)"
            )
        return None, None
    if args.interpolate:
        raise ConfigError("--clip-model scores the rows of a --compare grid; leave it out with --interpolate")
    if args.reference_prompt is None and args.reference_images is None:
        raise ConfigError(
            "--clip-model needs something to compare with: pass --reference-prompt TEXT (CLIP-T) "
            "and/or --reference-images DIR (CLIP-I)"
        )
    from ..models.pipeline import resolve_device
    from ..render.scoring import ClipScorer, Reference
    from ..train.data import read_images

    pictures: list = []
    if args.reference_images is not None:
        pictures, warnings = read_images(args.reference_images, "--reference-images")
        for warning in warnings:
            print(f"{PROG}: warning: {args.reference_images}: {warning}", file=sys.stderr)
    scorer = ClipScorer(args.clip_model, device=resolve_device(args.device))
    return scorer, Reference(prompt=args.reference_prompt, images=pictures)


def _interpolation_grid(args, out: Path) -> int:
    from ..errors import ConfigError
    from ..files.mixing import interpolate
    from ..render.generate import default_guidance, run_interpolation

    if args.compare or args.per_encoder:
        raise ConfigError(
            "--interpolate draws its own rows; leave --compare and --per-encoder out (or draw a second grid)"
        )
    a, b = args.interpolate
    interpolate(a, b, 0.5)  # files that cannot be combined fail before the (slow) model load
    pipe, family, soft_files = _pipeline_with_soft(args)
    _warn_overflow(pipe, family, [args.prompt], args.weighting)
    grid, record = run_interpolation(
        pipe,
        a,
        b,
        args.prompt,
        args.seeds,
        args.interpolate_steps,
        steps=args.steps,
        guidance=default_guidance(pipe, family) if args.guidance is None else args.guidance,
        height=args.height,
        width=args.width,
        model_name=args.model,
        out=out,
        negative_prompt=args.negative_prompt,
        soft_files=soft_files,
        family=family,
        weighting=args.weighting,
    )
    print(f"wrote {grid}\nwrote {record}")
    return 0


def _mix(args) -> int:
    from ..files.mixing import concat, mix

    if args.concat and args.weights:
        raise SoftPromptError("--concat puts vectors one after another and takes no --weights; give one or the other")
    if args.concat:
        result = concat(args.files, strength=args.strength, name=args.name)
    else:
        result = mix(args.files, args.weights, strength=args.strength, name=args.name)
    for path in result.save(args.out):
        print(f"wrote {path} ({result.num_vectors} vectors, {result.metadata['mix']})")
    return 0


def _inspect(args) -> int:
    from ..files.convert import load_all
    from ..inject.inspection import format_inspection, inspect_file

    softs = load_all(args.file)  # read once (every embedding of a LoRA bundle); a bad file fails before the model
    pipe = _load(args) if args.model else None
    reports = [inspect_file(soft, pipe, top_k=args.top_k) for soft in softs]
    if args.json:
        # The values as the file has them (a JSON reader gets them back exactly), but nothing a terminal acts on:
        # json escapes C0 controls itself; C1 controls and bidi overrides are written as \u escapes too.
        print(
            escaped(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False), keep="\n")
        )
        return 0
    if softs[0].source_format.startswith("lora-bundle"):
        names = listed([s.name for s in softs], 10)
        print(f"{args.file}: a LoRA file with {len(softs)} bundled soft prompt(s): {names}")
    print("\n\n".join(format_inspection(report) for report in reports))
    return 0


def _demo(args) -> int:
    from .demo import describe, run_demo

    result = run_demo(args.out, family=args.family, steps=args.steps, seed=args.seed, device=args.device)
    print(describe(result))
    for line in _ratio_lines(result.get("metrics") or {}):
        print(line)
    return 0


def _convert(args) -> int:
    from ..files.convert import convert

    source = args.files[0] if len(args.files) == 1 else args.files
    if args.lora and args.to != "bundle":
        raise SoftPromptError(
            f"--lora is for --to bundle (a copy of the LoRA with the soft prompt added), not --to {args.to}"
        )
    for path in convert(source, args.to, args.out, lora=args.lora, embedding=args.embedding):
        print(f"wrote {path} ({args.to})")
    return 0


def _train(args) -> int:
    from ..errors import ConfigError
    from ..train import TrainConfig, train
    from ..train.config_file import read_config

    # the flags given on the command line, over --config's values, over the fields' defaults
    values = read_config(args.config) if args.config else {}
    values |= {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    missing = [f"--{name}" for name in ("model", "out") if name not in values]
    if missing:
        where = f" or in {args.config}" if args.config else " (or in a --config file)"
        raise ConfigError(f"the following arguments are required: {', '.join(missing)}; give them here{where}")
    result = train(TrainConfig(**values))
    print(f"soft prompt  {result.soft_prompt}")
    print(f"report       {result.report}")
    for label, path in (("config", result.config), ("model card", result.card), ("on the Hub", result.hub_url)):
        if path is not None:
            print(f"{label:<12} {path}")
    for line in _ratio_lines(result.metrics or {}):
        print(line)
    return 0


HANDLERS: dict[str, Callable[[Any], int]] = {
    "generate": _generate,
    "grid": _grid,
    "inspect": _inspect,
    "demo": _demo,
    "convert": _convert,
    "mix": _mix,
    "train": _train,
}


# --------------------------------------------------------------------------------------- helpers
def _parse_soft(spec: str) -> tuple[str, list[str] | None]:
    """``FILE`` or ``FILE=t1,t2,...``; a path that exists as written wins over the ``=`` form."""
    if "=" not in spec or Path(spec).exists():
        return spec, None
    path, names = spec.rsplit("=", 1)
    return path, [name.strip() for name in names.split(",") if name.strip()]


def _load(args):
    from ..models.pipeline import load_pipeline

    return load_pipeline(args.model, device=args.device, dtype=args.dtype)


def _read_soft(args) -> tuple[list, list]:
    """Every --soft file's soft prompts and the token names each is loaded under (None: its own)."""
    from ..files.convert import load_all

    softs, names = [], []  # a LoRA file may bundle several soft prompts: each loads under its own name
    for path, tokens in (_parse_soft(spec) for spec in args.soft):
        read = load_all(path)  # a bad file fails before the (slow) model load
        if tokens and len(read) > 1:
            raise SoftPromptError(
                f"{path}: bundles {len(read)} soft prompts, each under its own name; =TOKENS renames one"
            )
        softs += read
        names += [tokens] * len(read)
    return softs, names


def _pipeline_with_soft(args, read: tuple[list, list] | None = None):
    """Read every --soft file (once; `read`: already read by `_read_soft`), load the model, then load the soft
    prompts into it. Returns the pipeline, its family (detected once, for the rest of the command) and the files."""
    from ..families import detect_family
    from ..inject.loader import load_soft_prompts

    specs = [_parse_soft(spec) for spec in args.soft]
    softs, names = read or _read_soft(args)
    pipe = _load(args)
    family = detect_family(pipe)
    # One call: token clashes between the files are refused before anything loads, each table grows once.
    load_soft_prompts(pipe, softs, names, family=family, allow_shadowing=args.allow_shadowing)
    return pipe, family, [path for path, _ in specs]


def _warn_overflow(pipe, family, prompts: list[str], weighting: str | None = None) -> None:
    """Say when a prompt is cut to fit an encoder's window: soft tokens make that easy to miss. (With
    --weighting nothing is cut: long prompts are encoded in chunks.)"""
    from ..inject.loader import prompt_overflow

    if weighting is not None:
        return
    for prompt in prompts:
        for warning in prompt_overflow(pipe, prompt, family):
            shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
            print(f"{PROG}: warning: {shown!r}: {warning}", file=sys.stderr)


def _ratio_lines(metrics: dict, prefix: str = "") -> list[str]:
    """Every metric whose name says "ratio" (the distance ratios), as "name  value" lines."""
    lines = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines += _ratio_lines(value, f"{name}.")
        elif "ratio" in str(key) and isinstance(value, (int, float)):
            lines.append(f"{name}  {value:.4g}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
