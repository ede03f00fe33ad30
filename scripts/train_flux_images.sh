#!/usr/bin/env bash
# Textual inversion on Flux with the flow-matching objective, T5 only (the CLIP vectors keep their
# initial values). bf16; GPU with >= 80 GB, or fewer with a smaller --resolution.
set -euo pipefail
MODEL=${MODEL:-black-forest-labs/FLUX.1-dev}
sd-softprompt train --model "$MODEL" --mode images --images "${IMAGES:?set IMAGES to a folder of pictures}" \
    --vectors 4 --encoders t5xxl --steps 1000 --lr 3e-3 --batch-size 1 --grad-accum 4 --resolution 512 \
    --mixed-precision bf16 --out out/flux-ti.safetensors
