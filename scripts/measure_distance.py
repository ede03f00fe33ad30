"""The measure of success for a soft prompt file: denoiser-space distance to its hard prompt.

D(p) = mean ||f(x_t, t, enc(p)) - f(x_t, t, enc(hard))||^2 over fixed random noisy latents and timesteps,
with the pipeline's own UNet / transformer f and prompt encoding, for the soft prompt and the two
baselines (the first N words of the hard prompt, the empty prompt), alone and with held-out context words.

    python scripts/measure_distance.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --soft sunrise.safetensors --device cuda --eval-samples 16
"""

from __future__ import annotations

import argparse
import json
import sys

from sd_softprompt.errors import SoftPromptError
from sd_softprompt.families import detect_family
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt
from sd_softprompt.models.pipeline import load_pipeline
from sd_softprompt.train.measure import EVAL_CONTEXTS, Probe, distance_report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub id or folder of a diffusers pipeline")
    p.add_argument("--soft", required=True, help="soft prompt file")
    p.add_argument("--target", help="the hard prompt (default: the file's `target` metadata)")
    p.add_argument("--context", action="append", help="context suffixes (default: the held-out ones)")
    # the train command's flag names (the old --samples / --size still work)
    p.add_argument("--eval-samples", "--samples", type=int, default=8, help="noisy latents in the probe")
    p.add_argument("--probe-size", "--size", type=int, help="probe image size (default: the model's, at most 512)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    args = p.parse_args()
    try:
        soft = SoftPrompt.load(args.soft)
        target = args.target or soft.metadata.get("target")
        if not target:
            raise SoftPromptError(f'{args.soft}: no `target` in its metadata; pass --target "the hard prompt"')
        pipe = load_pipeline(args.model, args.device, args.dtype, progress=False)
        tokens = load_soft_prompt(pipe, soft)
    except SoftPromptError as e:
        print(f"measure_distance: error: {e}", file=sys.stderr)
        return 2
    family = detect_family(pipe)
    probe = Probe.make(pipe, family, args.eval_samples, args.probe_size, seed=args.seed)
    contexts = [""] + (args.context or [c for c in EVAL_CONTEXTS if c])
    report = distance_report(pipe, family, "".join(tokens), target, soft.num_vectors, probe, contexts)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
