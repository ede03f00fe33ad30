#!/usr/bin/env bash
# Distil a hard prompt for Flux (clip_l pooled + t5xxl states). bf16; the transformer is only used for
# the final measure. GPU with >= 40 GB (T5-XXL + transformer in bf16).
set -euo pipefail
MODEL=${MODEL:-black-forest-labs/FLUX.1-dev}
HARD="image of serene landscape at sunrise with trees mountains and lake"
sd-softprompt train --model "$MODEL" --mode text --target "$HARD" --vectors 3 --steps 300 \
    --mixed-precision bf16 --probe-size 512 --eval-samples 4 --out out/flux-sunrise.safetensors
sd-softprompt grid --model "$MODEL" --dtype bf16 --soft out/flux-sunrise.safetensors --prompt "[v1][v2][v3] mountain view" \
    --compare "$HARD mountain view" --compare "image of serene mountain view" --seeds 0 1 --steps 28 --out out/flux-sunrise-grid.png
