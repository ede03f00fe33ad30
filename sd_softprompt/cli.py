"""`sd-softprompt`: generate, grid, inspect, demo, convert, train. A thin layer over the Python API.

Every command runs inside one wrapper: a user error (SoftPromptError, a bad flag, or an OSError such as a
missing path, a full disk or a refused permission) prints one line, ``sd-softprompt: error: <message>``, to
stderr and returns 2; never a traceback. Ctrl-C prints one line too (what was kept, how to resume) and
returns 130, the shell's code for an interrupt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import SoftPromptError

PROG = "sd-softprompt"
_MAX_MESSAGE = 400  # a safety net: messages are written short; this keeps any one of them a line


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (argparse's own prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message}; see {self.prog} --help\n")


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
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args) or 0
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
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _os_message(error: OSError) -> str:
    if error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error) or type(error).__name__


# ---------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Soft prompts (learned prompt embeddings) for SD 1.x/2.x, SDXL, SD3 and Flux.",
        formatter_class=_Formatter,
        epilog=f"example:\n  {PROG} demo\n  {PROG} <command> --help",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_generate, _add_grid, _add_inspect, _add_demo, _add_convert, _add_mix, _add_train):
        add(commands)
    return parser


def _command(commands, name: str, help_: str, example: str, handler: Callable) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help_, description=help_, formatter_class=_Formatter, epilog=f"example:\n  {example}"
    )
    parser.set_defaults(handler=handler)
    return parser


def _model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--model", required=required, help="hub id (owner/name) or local folder of a diffusers pipeline"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: fp16 on a GPU, fp32 on the CPU")


def _soft_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--soft",
        action="append",
        default=[],
        metavar="FILE[=TOKENS]",
        help="soft prompt file to load (repeatable); FILE=t1,t2,t3 renames its tokens, "
        "e.g. when two files both use [v1]..[vN]",
    )
    parser.add_argument(
        "--allow-shadowing",
        action="store_true",
        help="load tokens that are words of the model's vocabulary (they then replace that word in every prompt)",
    )


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=30, help="inference steps (default %(default)s)")
    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale (default: the family's usual one: 7.5 for SD, 5 for SDXL, 7 for SD3, 3.5 for Flux)",
    )
    parser.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    parser.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    parser.add_argument("--negative-prompt", help="negative prompt (SD, SDXL and SD3; Flux takes none)")


def _add_generate(commands) -> None:
    p = _command(
        commands,
        "generate",
        "Draw one image, optionally with soft prompts loaded.",
        f"{PROG} generate --model stabilityai/stable-diffusion-xl-base-1.0 --soft sunrise.safetensors \\\n"
        f'      --prompt "[v1][v2][v3] mountain view" --seed 0 --out sunrise.png',
        _generate,
    )
    _model_args(p)
    _soft_arg(p)
    p.add_argument("--prompt", required=True, help="the prompt; soft tokens like [v1][v2][v3] go in as text")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    _sampling_args(p)
    p.add_argument("--out", default="image.png", help="image file to write (default %(default)s)")


def _add_grid(commands) -> None:
    p = _command(
        commands,
        "grid",
        "Draw a labelled grid: rows are prompts, columns are seeds (the same seed down each column).",
        f"{PROG} grid --model stabilityai/stable-diffusion-xl-base-1.0 --soft sunrise.safetensors \\\n"
        f'      --prompt "[v1][v2][v3] mountain view" \\\n'
        f'      --compare "image of serene landscape at sunrise with trees mountains and lake mountain view" \\\n'
        f'      --compare "mountain view" --seeds 0 1 2 --out grid.png\n'
        f"  {PROG} grid --model ... --interpolate dawn.safetensors dusk.safetensors --interpolate-steps 5 \\\n"
        f'      --prompt "[v1][v2][v3] mountain view" --seeds 0 --out dawn_to_dusk.png',
        _grid,
    )
    _model_args(p)
    _soft_arg(p)
    p.add_argument("--prompt", required=True, help="the first row, usually the soft prompt")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="PROMPT",
        help="another row (repeatable): the hard prompt, a baseline...",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED", help="one column per seed (default 0 1 2)"
    )
    p.add_argument(
        "--interpolate",
        nargs=2,
        metavar=("A", "B"),
        help="instead of --compare rows: one row per seed, columns from soft prompt A to B (same N and family), "
        "loaded under A's tokens, which --prompt must use",
    )
    p.add_argument(
        "--interpolate-steps",
        type=int,
        default=5,
        metavar="K",
        help="with --interpolate: columns, A and B included (default %(default)s); --steps stays the sampler's",
    )
    _sampling_args(p)
    p.add_argument(
        "--out", default="grid.png", help="grid image to write; <stem>.json goes beside it (default %(default)s)"
    )


def _add_inspect(commands) -> None:
    p = _command(
        commands,
        "inspect",
        "Show a soft prompt file: format, family, encoders, tokens, norms; with --model, nearest vocabulary tokens.",
        f"{PROG} inspect sunrise.safetensors --model stabilityai/stable-diffusion-xl-base-1.0",
        _inspect,
    )
    p.add_argument("file", metavar="FILE", help="soft prompt file (any format this package reads)")
    _model_args(p, required=False)
    p.add_argument("--top-k", type=int, default=5, help="nearest tokens per vector (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_demo(commands) -> None:
    from .demo import DEMO_FAMILIES, TRAIN_STEPS

    p = _command(
        commands,
        "demo",
        "End to end on a tiny random-weight model, offline, on a CPU: train, load, grid, inspect.",
        f"{PROG} demo --family sd1 --out samples/demo",
        _demo,
    )
    p.add_argument("--family", choices=DEMO_FAMILIES, default="sd1", help="tiny pipeline to use (default %(default)s)")
    p.add_argument("--out", default="samples/demo", help="output folder (default %(default)s)")
    p.add_argument("--steps", type=int, default=TRAIN_STEPS, help="training steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the tiny model and training (default %(default)s)")
    p.add_argument("--device", help="default: cuda if available, else cpu")


def _add_convert(commands) -> None:
    from .format import FORMATS

    p = _command(
        commands,
        "convert",
        "Rewrite a soft prompt file in another tool's format.",
        f"{PROG} convert sunrise.safetensors --to a1111 --out sunrise.pt\n"
        f"  {PROG} convert learned_embeds.safetensors learned_embeds_2.safetensors --to native --out sunrise.safetensors\n"
        f"  {PROG} convert sunrise.safetensors --to bundle --lora style.safetensors --out style_sunrise.safetensors\n"
        f"  {PROG} convert style_sunrise.safetensors --embedding sunrise --to native --out sunrise.safetensors",
        _convert,
    )
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="the file, two files of a diffusers SDXL pair, or a LoRA with a bundle"
    )
    p.add_argument(
        "--to",
        required=True,
        choices=(*FORMATS, "bundle"),
        help="target format; bundle: a copy of --lora with the soft prompt added as bundle_emb.NAME.*",
    )
    p.add_argument("--lora", metavar="LORA", help="with --to bundle: the LoRA .safetensors file to copy (unchanged)")
    p.add_argument(
        "--embedding",
        metavar="NAME",
        help="a LoRA FILE with several bundled soft prompts: the one to convert; with --to bundle: its name "
        "in the bundle (default: the soft prompt's name)",
    )
    p.add_argument("--out", required=True, help="file (or folder, for diffusers) to write")


def _add_mix(commands) -> None:
    p = _command(
        commands,
        "mix",
        "Combine soft prompts of one family into a new native file: weighted sum, concatenation, strength.",
        f"{PROG} mix dawn.safetensors dusk.safetensors --weights 0.7 0.3 --out evening.safetensors\n"
        f"  {PROG} mix sunrise.safetensors cat.safetensors --concat --out cat_at_sunrise.safetensors\n"
        f"  {PROG} mix sunrise.safetensors --strength 1.3 --out sunrise_strong.safetensors",
        _mix,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="soft prompt files (any format this package reads)")
    p.add_argument(
        "--weights",
        type=float,
        nargs="+",
        metavar="W",
        help="one weight per file for the weighted sum (default: the mean); the files need the same N",
    )
    p.add_argument("--concat", action="store_true", help="put the files' vectors one after another (N1 + N2 ...)")
    p.add_argument("--strength", type=float, default=1.0, help="multiply the result by this (default %(default)s)")
    p.add_argument("--name", help="name stored in the file (default: mix)")
    p.add_argument("--out", required=True, help="native .safetensors file to write")


# TrainConfig field -> (flag, argparse keywords). One flag per field; defaults come from TrainConfig.
_TRAIN_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "model": ("--model", {"required": True, "help": "hub id or local folder of a diffusers pipeline"}),
    "out": (
        "--out",
        {"required": True, "help": "soft prompt file to write (.safetensors); a report JSON goes beside it"},
    ),
    "mode": (
        "--mode",
        {"choices": ("text", "images"), "help": "text: distil a hard prompt; images: textual inversion"},
    ),
    "target": ("--target", {"help": "text mode: the hard prompt to distil"}),
    "images": ("--images", {"help": "images mode: folder of pictures (+ optional same-name .txt captions)"}),
    "vectors": ("--vectors", {"type": int, "help": "number of soft vectors N"}),
    "steps": ("--steps", {"type": int, "help": "optimizer steps"}),
    "lr": ("--lr", {"type": float, "help": "learning rate"}),
    "batch_size": ("--batch-size", {"type": int, "help": "batch size"}),
    "grad_accum": ("--grad-accum", {"type": int, "help": "gradient accumulation steps"}),
    "warmup": ("--warmup", {"type": int, "help": "linear warm-up steps"}),
    "schedule": ("--schedule", {"help": "learning-rate schedule: constant or cosine"}),
    "max_grad_norm": ("--max-grad-norm", {"type": float, "help": "gradient clipping norm"}),
    "seed": ("--seed", {"type": int, "help": "seed"}),
    "mixed_precision": ("--mixed-precision", {"choices": ("no", "fp16", "bf16"), "help": "frozen models' precision"}),
    "init": (
        "--init",
        {"help": "initial vectors: hard (the --target's token embeddings; random without one), random or words"},
    ),
    "init_words": ("--init-words", {"help": "with --init words: the words to start from"}),
    "context": ("--context", {"action": "append", "metavar": "TEXT", "help": "extra context suffix (repeatable)"}),
    "loss": ("--loss", {"help": "text mode: denoiser, sequence (no denoiser needed per step), full or denoiser-fresh"}),
    "norm_weight": ("--norm-weight", {"type": float, "help": "pull vector norms towards the vocabulary's"}),
    "encoders": ("--encoders", {"nargs": "+", "metavar": "KEY", "help": "train only these encoder keys (e.g. t5xxl)"}),
    "tokens": ("--tokens", {"nargs": "+", "metavar": "TOKEN", "help": "placeholder token names (default [v1]..[vN])"}),
    "allow_shadowing": (
        "--allow-shadowing",
        {"action": "store_true", "help": "allow --tokens that are words of the model's vocabulary (they replace it)"},
    ),
    "name": ("--name", {"help": "name stored in the file (default: the file stem)"}),
    "resolution": ("--resolution", {"type": int, "help": "images mode: training resolution"}),
    "flip": ("--no-flip", {"action": "store_false", "help": "images mode: no random horizontal flips"}),
    "style": ("--style", {"action": "store_true", "help": "images mode: style captions instead of object captions"}),
    "validate_every": ("--validate-every", {"type": int, "help": "steps between validation grids (0: none)"}),
    "validation_prompts": (
        "--validation-prompt",
        {"action": "append", "metavar": "PROMPT", "help": "validation prompt (repeatable)"},
    ),
    "validation_seeds": (
        "--validation-seeds",
        {"type": int, "nargs": "+", "metavar": "SEED", "help": "validation seeds"},
    ),
    "checkpoint_every": ("--checkpoint-every", {"type": int, "help": "steps between checkpoints"}),
    "resume": ("--resume", {"action": "store_true", "help": "continue from the checkpoint beside --out"}),
    "probe_pool": (
        "--probe-pool",
        {"type": int, "help": "denoiser loss: noisy latents per context whose targets are computed once"},
    ),
    "eval_samples": ("--eval-samples", {"type": int, "help": "noisy latents in the denoiser-distance probe"}),
    "probe_size": (
        "--probe-size",
        {"type": int, "help": "image size of the probe (default: the model's, at most 512)"},
    ),
    "device": ("--device", {"help": "cpu, cuda, cuda:1 (default: cuda if available, else cpu)"}),
    "offload": (
        "--no-offload",
        {
            "action": "store_false",
            "help": "keep the VAE (and, in text mode with a state loss, the denoiser) on the device during training",
        },
    ),
    "progress": ("--no-progress", {"action": "store_false", "help": "no progress bar"}),
}


def _add_train(commands) -> None:
    from .train import TrainConfig

    p = _command(
        commands,
        "train",
        "Train a soft prompt: distil a hard prompt (text mode) or learn from pictures (images mode).",
        f"{PROG} train --model stabilityai/stable-diffusion-xl-base-1.0 --mode text \\\n"
        f'      --target "image of serene landscape at sunrise with trees mountains and lake" \\\n'
        f"      --vectors 3 --steps 300 --out sunrise.safetensors",
        _train,
    )
    defaults = _config_defaults(TrainConfig)
    for field_name, (flag, options) in _TRAIN_FLAGS.items():
        options = dict(options)
        if options.get("action") not in ("store_true", "store_false") and not options.get("required"):
            options["default"] = defaults[field_name]
            if defaults[field_name] not in (None, []):
                options["help"] += " (default %(default)s)"
        p.add_argument(flag, dest=field_name, **options)


def _config_defaults(config_class) -> dict[str, Any]:
    defaults = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
        else:
            defaults[f.name] = None
    return defaults


# -------------------------------------------------------------------------------------- handlers
def _generate(args) -> int:
    from .generate import default_guidance, generate, image_path, save_image

    out = image_path(Path(args.out))  # an unwritable suffix fails before the model loads
    pipe, family, _ = _pipeline_with_soft(args)
    _warn_overflow(pipe, family, [args.prompt])
    guidance = default_guidance(pipe, family) if args.guidance is None else args.guidance
    image = generate(
        pipe, args.prompt, args.seed, args.steps, guidance, args.height, args.width, args.negative_prompt, family
    )
    print(f"wrote {save_image(image, out)}")
    return 0


def _grid(args) -> int:
    from .generate import default_guidance, grid_target, image_path, run_grid

    out = image_path(grid_target(Path(args.out)))
    if args.interpolate:
        return _interpolation_grid(args, out)
    pipe, family, soft_files = _pipeline_with_soft(args)
    prompts = [args.prompt, *args.compare]
    _warn_overflow(pipe, family, prompts)
    grid, record = run_grid(
        pipe,
        prompts,
        args.seeds,
        steps=args.steps,
        guidance=default_guidance(pipe, family) if args.guidance is None else args.guidance,
        height=args.height,
        width=args.width,
        model_name=args.model,
        out=out,
        negative_prompt=args.negative_prompt,
        soft_files=soft_files,
        family=family,
    )
    print(f"wrote {grid}\nwrote {record}")
    return 0


def _interpolation_grid(args, out: Path) -> int:
    from .errors import ConfigError
    from .generate import default_guidance, run_interpolation
    from .mixing import interpolate

    if args.compare:
        raise ConfigError("--interpolate draws its own row; leave --compare out (or draw a second grid)")
    a, b = args.interpolate
    interpolate(a, b, 0.5)  # files that cannot be combined fail before the (slow) model load
    pipe, family, soft_files = _pipeline_with_soft(args)
    _warn_overflow(pipe, family, [args.prompt])
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
    )
    print(f"wrote {grid}\nwrote {record}")
    return 0


def _mix(args) -> int:
    from .mixing import concat, mix

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
    from .format import load_all
    from .inspection import format_inspection, inspect_file

    softs = load_all(args.file)  # read once (every embedding of a LoRA bundle); a bad file fails before the model
    pipe = _load(args) if args.model else None
    reports = [inspect_file(soft, pipe, top_k=args.top_k) for soft in softs]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False))
        return 0
    if softs[0].source_format.startswith("lora-bundle"):
        print(f"{args.file}: a LoRA file with {len(softs)} bundled soft prompt(s): {', '.join(s.name for s in softs)}")
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
    from .format import convert

    source = args.files[0] if len(args.files) == 1 else args.files
    if args.lora and args.to != "bundle":
        raise SoftPromptError(
            f"--lora is for --to bundle (a copy of the LoRA with the soft prompt added), not --to {args.to}"
        )
    for path in convert(source, args.to, args.out, lora=args.lora, embedding=args.embedding):
        print(f"wrote {path} ({args.to})")
    return 0


def _train(args) -> int:
    from .train import TrainConfig, train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    result = train(config)
    print(f"soft prompt  {result.soft_prompt}")
    print(f"report       {result.report}")
    for line in _ratio_lines(result.metrics or {}):
        print(line)
    return 0


# --------------------------------------------------------------------------------------- helpers
def _parse_soft(spec: str) -> tuple[str, list[str] | None]:
    """``FILE`` or ``FILE=t1,t2,...``; a path that exists as written wins over the ``=`` form."""
    if "=" not in spec or Path(spec).exists():
        return spec, None
    path, names = spec.rsplit("=", 1)
    return path, [name.strip() for name in names.split(",") if name.strip()]


def _load(args):
    from .pipeline import load_pipeline

    return load_pipeline(args.model, device=args.device, dtype=args.dtype)


def _pipeline_with_soft(args):
    """Read every --soft file (once), load the model, then load the soft prompts into it.
    Returns the pipeline, its family (detected once, for the rest of the command) and the files."""
    from .families import detect_family
    from .format import load_all
    from .loader import load_soft_prompts

    specs = [_parse_soft(spec) for spec in args.soft]
    softs, names = [], []  # a LoRA file may bundle several soft prompts: each loads under its own name
    for path, tokens in specs:
        read = load_all(path)  # a bad file fails before the (slow) model load
        if tokens and len(read) > 1:
            raise SoftPromptError(
                f"{path}: bundles {len(read)} soft prompts, each under its own name; =TOKENS renames one"
            )
        softs += read
        names += [tokens] * len(read)
    pipe = _load(args)
    family = detect_family(pipe)
    # One call: token clashes between the files are refused before anything loads, each table grows once.
    load_soft_prompts(pipe, softs, names, family=family, allow_shadowing=args.allow_shadowing)
    return pipe, family, [path for path, _ in specs]


def _warn_overflow(pipe, family, prompts: list[str]) -> None:
    """Say when a prompt is cut to fit an encoder's window: soft tokens make that easy to miss."""
    from .loader import prompt_overflow

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
