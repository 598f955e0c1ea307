"""``python -m vtprune``: the CLI, so launchers that run modules work (``accelerate launch -m vtprune train ...``)."""

import sys

from vtprune.cli import main

sys.exit(main())
