#!/usr/bin/env bash
# Textual inversion on SD 1.5 from a folder of 3-10 pictures (IMAGES=./my_cat). GPU.
set -euo pipefail
MODEL=${MODEL:-stable-diffusion-v1-5/stable-diffusion-v1-5}
sd-softprompt train --model "$MODEL" --mode images --images "${IMAGES:?set IMAGES to a folder of pictures}" \
    --vectors 4 --steps 2000 --lr 5e-3 --batch-size 4 --resolution 512 --mixed-precision fp16 \
    --validate-every 250 --validation-prompt "a photo of {} on the beach" --out out/sd15-ti.safetensors
