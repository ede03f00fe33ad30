#!/usr/bin/env bash
# Distil a hard prompt into 3 vectors on SD 1.5, then draw the comparison grid. GPU, ~2-3 minutes.
set -euo pipefail
MODEL=${MODEL:-stable-diffusion-v1-5/stable-diffusion-v1-5}
HARD="image of serene landscape at sunrise with trees mountains and lake"
sd-softprompt train --model "$MODEL" --mode text --target "$HARD" --vectors 3 --steps 300 \
    --mixed-precision fp16 --out out/sd15-sunrise.safetensors
sd-softprompt grid --model "$MODEL" --soft out/sd15-sunrise.safetensors --prompt "[v1][v2][v3] mountain view" \
    --compare "$HARD mountain view" --compare "image of serene mountain view" --compare "mountain view" \
    --seeds 0 1 2 3 --out out/sd15-sunrise-grid.png
