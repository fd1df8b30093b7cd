"""``python -m benchmark.cli`` (e.g. under ``torchrun``) is ``gmd26``."""

import sys

from benchmark.cli import main

sys.exit(main())
