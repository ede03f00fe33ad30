"""`python -m sd_softprompt.cli`: the same as `sd-softprompt` (accelerate launch runs it this way)."""

import sys

from .main import main

sys.exit(main())
