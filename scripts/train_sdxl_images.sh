#!/usr/bin/env bash
# Textual inversion on SDXL (both encoders) from a folder of pictures. GPU with >= 24 GB, bf16.
set -euo pipefail
MODEL=${MODEL:-stabilityai/stable-diffusion-xl-base-1.0}
sd-softprompt train --model "$MODEL" --mode images --images "${IMAGES:?set IMAGES to a folder of pictures}" \
    --vectors 4 --steps 1500 --lr 5e-3 --batch-size 2 --grad-accum 2 --resolution 1024 --mixed-precision bf16 \
    --validate-every 250 --out out/sdxl-ti.safetensors
