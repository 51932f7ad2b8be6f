"""`python -m steer_plugins.apps.cli`: the same entry point as the `steer` console script."""

import sys

from . import main

sys.exit(main())
