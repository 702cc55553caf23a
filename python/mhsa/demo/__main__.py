"""``python -m mhsa.demo``: runs the demo (see :mod:`mhsa.demo`)."""

import sys

from mhsa.demo.cli import main

sys.exit(main())
