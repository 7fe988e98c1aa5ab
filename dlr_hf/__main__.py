"""``python -m dlr_hf ...`` (and ``accelerate launch -m dlr_hf ...``) runs the CLI."""

import sys

from dlr_hf.surfaces.cli import main

sys.exit(main())
