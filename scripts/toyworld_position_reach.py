"""How far into a prompt the toy-world model reads: a word drawn or not by where it stands.

    python scripts/toyworld_position_reach.py                     # "with snow" after 0-40 filler tokens
    python scripts/toyworld_position_reach.py --model FOLDER --word clouds
    python scripts/toyworld_position_reach.py --soft long.safetensors --filler 0    # a soft prompt as the scene
    python scripts/toyworld_position_reach.py --pads 24      # where the UNet reads it: the padding's states

The prompt is the concise scene "mountains and lake and trees at sunrise", then K tokens of filler that names
no attribute ("a calm scene" repeated), then "with <word>"; the control puts "<word> and" first and the same
filler after, so that both prompts are as long. With --soft the scene is that soft prompt's tokens (loaded into
the model), as a user composes it: "[v1]..[vN] with snow" against "snow and [v1]..[vN]". Prints, per K, the
token position of the word and in how many of the pictures (fidelity.STEPS DDIM steps, guidance
fidelity.GUIDANCE, --pictures seeds) the judge finds it.
A model trained on short captions need not read later positions: a word past its reach is not drawn,
whatever it says (a soft prompt of N vectors puts the words composed after it at positions N+1...).

--pads K: the text encoder's states of the word's prompt with no filler ("short") and with K filler tokens
("long") are drawn as they are and with their padding states (every position after the word: end of text and
the padding, which CLIP's causal attention lets see the whole prompt) swapped between the two. Where the long
prompt with the short one's padding draws the word and the short one with the long one's does not, the UNet
reads the prompt from its padding and the text encoder did not carry the late word into it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.inject.loader import load_soft_prompt  # noqa: E402
from sd_softprompt.models.pipeline import load_pipeline  # noqa: E402
from sd_softprompt.models.toyworld import fidelity as fid  # noqa: E402
from sd_softprompt.models.toyworld import judge  # noqa: E402

SCENE = "mountains and lake and trees at sunrise"
FILLER = "a calm scene"


def filler(pipe, k: int) -> str:
    """Exactly k tokens of FILLER repeated (k = 0: none)."""
    ids = pipe.tokenizer(" ".join([FILLER] * k), add_special_tokens=False).input_ids[:k]
    return pipe.tokenizer.decode(ids) if k else ""


def position(pipe, prompt: str, word: str) -> int:
    """The 1-based token position of ``word`` in ``prompt`` (0 is the start-of-text token)."""
    ids = pipe.tokenizer(prompt).input_ids
    return ids.index(pipe.tokenizer(word, add_special_tokens=False).input_ids[0])


def found(pipe, prompt: str, word: str, seeds: list[int]) -> int:
    """In how many of the pictures the judge finds ``word``'s attribute."""
    return sum(word in judge.judge(p).flags for p in fid.draw(pipe, prompt, seeds=seeds))


def _states(pipe, prompt: str):
    """The text encoder's states of ``prompt``, padded to the window as the pipeline pads it, and its token ids."""
    window = pipe.tokenizer.model_max_length
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=window, truncation=True, return_tensors="pt")
    ids = ids.input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0], ids[0].tolist()


def _found_in(pipe, states, word: str, seeds: list[int]) -> int:
    empty, _ = _states(pipe, "")
    return sum(word in judge.judge(p).flags for p in fid.draw_states(pipe, states, empty, seeds))


def pads_swapped(pipe, k: int, word: str, seeds: list[int]) -> dict[str, int]:
    """Pictures with ``word`` found: the short and the long prompt as they are, and with their padding swapped."""
    short, ids_short = _states(pipe, f"{SCENE} with {word}")
    long, ids_long = _states(pipe, f"{SCENE} {filler(pipe, k)} with {word}")
    word_id = pipe.tokenizer(word, add_special_tokens=False).input_ids[0]
    after_short, after_long = ids_short.index(word_id) + 1, ids_long.index(word_id) + 1
    window = short.shape[1]
    pads_short, pads_long = short[:, after_short:], long[:, after_long:]
    long_with_short_pads = torch.cat([long[:, :after_long], pads_short[:, : window - after_long]], dim=1)
    # the long prompt has fewer padding states than the short one has room for: its last one fills the rest
    fill = pads_long[:, -1:].expand(-1, window - after_short - pads_long.shape[1], -1)
    short_with_long_pads = torch.cat([short[:, :after_short], pads_long, fill], dim=1)
    return {
        "short": _found_in(pipe, short, word, seeds),
        "long": _found_in(pipe, long, word, seeds),
        "long with the short one's padding": _found_in(pipe, long_with_short_pads, word, seeds),
        "short with the long one's padding": _found_in(pipe, short_with_long_pads, word, seeds),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument("--word", default="snow", help="a flag word the scene does not name (snow or clouds)")
    p.add_argument("--filler", type=int, nargs="+", default=[0, 4, 8, 12, 16, 24, 40])
    p.add_argument("--pictures", type=int, default=8, help="picture seeds 0..N-1")
    p.add_argument("--soft", help="a soft prompt file for this model: its tokens are the scene")
    p.add_argument("--pads", type=int, metavar="K", help="swap the padding states of the prompt with K filler tokens")
    args = p.parse_args(argv)
    pipe = load_pipeline(args.model)
    seeds = list(range(args.pictures))
    if args.pads is not None:
        print(f"{args.word} found in pictures of {len(seeds)}, {args.pads} filler tokens:\n")
        print("| states | found |\n|---|---|")
        for name, n in pads_swapped(pipe, args.pads, args.word, seeds).items():
            print(f"| {name} | {n} |", flush=True)
        return 0
    scene = "".join(load_soft_prompt(pipe, args.soft)) if args.soft else SCENE
    print(f'"{scene} + K filler tokens + with {args.word}" and the control "{args.word} and {scene} + K filler":')
    print(f"{args.word} found in pictures of {len(seeds)}\n")
    print(f"| filler K | position of {args.word} | found | control: position | found |")
    print("|---|---|---|---|---|")
    for k in args.filler:
        late = f"{scene} {filler(pipe, k)} with {args.word}".replace("  ", " ")
        early = f"{args.word} and {scene} {filler(pipe, k)}".strip()
        cells = [k, position(pipe, late, args.word), found(pipe, late, args.word, seeds)]
        cells += [position(pipe, early, args.word), found(pipe, early, args.word, seeds)]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
