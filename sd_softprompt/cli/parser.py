"""The command line's flags and help: one argparse parser, one sub-parser per command. The commands themselves
(and the one-line error wrapper) are in cli.py; each sub-parser names its command, cli.HANDLERS runs it."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

PROG = "sd-softprompt"
WEIGHTINGS = ("a1111", "comfyui")  # render/weighting.py's (not imported here: the parser loads no torch)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (argparse's own prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Soft prompts (learned prompt embeddings) for SD 1.x/2.x, SDXL, SD3 and Flux.",
        formatter_class=_Formatter,
        epilog=f"example:\n  {PROG} demo\n  {PROG} <command> --help",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_generate, _add_grid, _add_inspect, _add_demo, _add_convert, _add_mix, _add_train):
        add(commands)
    return parser


def _command(commands, name: str, help_: str, example: str, command: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help_, description=help_, formatter_class=_Formatter, epilog=f"example:\n  {example}"
    )
    parser.set_defaults(command=command)  # cli.py's HANDLERS[command] runs it
    return parser


def _model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--model",
        required=required,
        help="hub id (owner/name), local folder of a diffusers pipeline, or toyworld (the built-in toy model)",
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
    parser.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        help="read (words:1.2), ([v1][v2]:1.2) and (words) in the prompts as A1111 (scale, keep the mean) or "
        "ComfyUI (move from the empty prompt) does, long prompts in 75-token chunks (SD, SDXL); default: "
        "the prompts go to the pipeline as typed",
    )


def _add_generate(commands) -> None:
    p = _command(
        commands,
        "generate",
        "Draw one image, optionally with soft prompts loaded.",
        f"{PROG} generate --model stabilityai/stable-diffusion-xl-base-1.0 --soft sunrise.safetensors \\\n"
        f'      --prompt "[v1][v2][v3] mountain view" --seed 0 --out sunrise.png',
        "generate",
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
        f'  {PROG} grid --model ... --soft sunrise.safetensors --prompt "[v1][v2][v3] mountain view" \\\n'
        f'      --compare "mountain view" --clip-model openai/clip-vit-base-patch32 \\\n'
        f'      --reference-prompt "mountain view at sunrise" --reference-images ./sunrise_photos\n'
        f"  {PROG} grid --model ... --interpolate dawn.safetensors dusk.safetensors --interpolate-steps 5 \\\n"
        f'      --prompt "[v1][v2][v3] mountain view" --seeds 0 --out dawn_to_dusk.png\n'
        f'  {PROG} grid --model ... --soft sunrise.safetensors --prompt "[v1][v2][v3] mountain view" --per-encoder\n'
        f"  {PROG} grid --model ... --soft sunrise.safetensors --weighting a1111 \\\n"
        f'      --prompt "([v1][v2][v3]:1.3) mountain view" --compare "([v1][v2][v3]:0.8) mountain view"',
        "grid",
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
        "--per-encoder",
        action="store_true",
        help="instead of one --prompt row: a row per subset of the --soft files' encoders (all, each smaller set, "
        "none), drawn with only those encoders' vectors (the others hold the tokens as zero rows); "
        "--compare rows follow",
    )
    p.add_argument(
        "--interpolate-steps",
        type=int,
        default=5,
        metavar="K",
        help="with --interpolate: columns, A and B included (default %(default)s); --steps stays the sampler's",
    )
    p.add_argument(
        "--clip-model",
        metavar="ID_OR_FOLDER",
        help="score each row's pictures with this transformers CLIPModel (hub id or folder): CLIP-T against "
        "--reference-prompt, CLIP-I against --reference-images; the scores go in the JSON record and are printed",
    )
    p.add_argument("--reference-prompt", metavar="TEXT", help="with --clip-model: the prompt CLIP-T compares with")
    p.add_argument(
        "--reference-images",
        metavar="DIR",
        help="with --clip-model: a folder of png/jpg/jpeg/webp pictures CLIP-I compares with",
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
        "inspect",
    )
    p.add_argument("file", metavar="FILE", help="soft prompt file (any format this package reads)")
    _model_args(p, required=False)
    p.add_argument("--top-k", type=int, default=5, help="nearest tokens per vector (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_demo(commands) -> None:
    from .demo import DEMO_FAMILIES, TOYWORLD_STEPS, TRAIN_STEPS

    p = _command(
        commands,
        "demo",
        "End to end, offline, on a CPU: train a soft prompt on the toy world, load it, draw a grid, measure F.",
        f"{PROG} demo --out samples/demo\n  {PROG} demo --family sdxl   # a tiny random-weight SDXL pipeline",
        "demo",
    )
    p.add_argument(
        "--family",
        choices=DEMO_FAMILIES,
        help="run on this family's tiny random-weight pipeline instead of the toy world (its pictures are noise)",
    )
    p.add_argument("--out", default="samples/demo", help="output folder (default %(default)s)")
    p.add_argument(
        "--steps", type=int, help=f"training steps (default {TOYWORLD_STEPS} on the toy world, {TRAIN_STEPS} tiny)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for training (and the tiny model) (default %(default)s)")
    p.add_argument("--device", help="default: cuda if available, else cpu")


def _add_convert(commands) -> None:
    from ..files.keys import FORMATS

    p = _command(
        commands,
        "convert",
        "Rewrite a soft prompt file in another tool's format.",
        f"{PROG} convert sunrise.safetensors --to a1111 --out sunrise.pt\n"
        f"  {PROG} convert learned_embeds.safetensors learned_embeds_2.safetensors --to native --out sunrise.safetensors\n"
        f"  {PROG} convert sunrise.safetensors --to bundle --lora style.safetensors --out style_sunrise.safetensors\n"
        f"  {PROG} convert style_sunrise.safetensors --embedding sunrise --to native --out sunrise.safetensors",
        "convert",
    )
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="the file, two files of a diffusers SDXL pair, or a LoRA with a bundle"
    )
    p.add_argument(
        "--to",
        required=True,
        choices=(*FORMATS, "bundle"),
        help="target format; comfyui, invokeai: the layout that client installs and loads for every family it "
        "runs (one file); bundle: a copy of --lora with the soft prompt added as bundle_emb.NAME.*",
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
        "mix",
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


def _add_train(commands) -> None:
    from ..train import TrainConfig

    p = _command(
        commands,
        "train",
        "Train a soft prompt: distil a hard prompt (text mode) or learn from pictures (images mode).",
        f"{PROG} train --model stabilityai/stable-diffusion-xl-base-1.0 --mode text \\\n"
        f'      --target "image of serene landscape at sunrise with trees mountains and lake" \\\n'
        f"      --vectors 3 --steps 300 --out sunrise.safetensors\n"
        f"  {PROG} train --config run.toml --steps 500   # the file's settings, --steps replaced",
        "train",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file of key = value lines, the keys these flags' names (batch-size = 4, no-flip = true); "
        "flags given here replace its values. Every run writes its own as <out stem>.config.toml",
    )
    # No defaults in the namespace: a flag left out is absent, so that --config's value (or the field's
    # default) stands; --model and --out may come from the file, so _train checks that they came at all.
    for field_name, (flag, options) in train_flags(TrainConfig).items():
        if options.pop("required", False):
            options["help"] += " (required, here or in --config)"
        p.add_argument(flag, dest=field_name, **(options | {"default": argparse.SUPPRESS}))


def train_flags(config_class) -> dict[str, tuple[str, dict[str, Any]]]:
    """TrainConfig field -> (flag, argparse keywords), from each field's metadata (train/config.py's `option`):
    one flag per field, its default the field's (and named in its help)."""
    flags = {}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        options = {**meta["argparse"], "help": meta["help"]}
        if options.get("action") not in ("store_true", "store_false") and not options.get("required"):
            options["default"] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if options["default"] not in (None, []):
                shown = (
                    " ".join(map(str, options["default"]))
                    if isinstance(options["default"], list)
                    else options["default"]
                )
                options["help"] += f" (default {str(shown).replace('%', '%%')})"
        flags[f.name] = (meta["flag"] or "--" + f.name.replace("_", "-"), options)
    return flags
