"""`python -m lahis_ctrl.cli ...` is the `lahis` command."""

import sys

from . import main

sys.exit(main())
