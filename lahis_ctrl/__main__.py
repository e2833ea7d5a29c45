"""`python -m lahis_ctrl ...` is the `lahis` command (also under torchrun: `torchrun ... -m lahis_ctrl score ...`)."""

import sys

from .cli import main

sys.exit(main())
