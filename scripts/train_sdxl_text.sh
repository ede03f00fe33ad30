#!/usr/bin/env bash
# Distil a hard prompt into 3 vectors for both SDXL encoders (clip_l 768 + clip_g 1280). GPU, bf16.
set -euo pipefail
MODEL=${MODEL:-stabilityai/stable-diffusion-xl-base-1.0}
HARD="image of serene landscape at sunrise with trees mountains and lake"
sd-softprompt train --model "$MODEL" --mode text --target "$HARD" --vectors 3 --steps 300 \
    --mixed-precision bf16 --out out/sdxl-sunrise.safetensors
sd-softprompt grid --model "$MODEL" --dtype bf16 --soft out/sdxl-sunrise.safetensors --prompt "[v1][v2][v3] mountain view" \
    --compare "$HARD mountain view" --compare "image of serene mountain view" --seeds 0 1 2 --out out/sdxl-sunrise-grid.png
