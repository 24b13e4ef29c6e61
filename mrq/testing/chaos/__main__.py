"""`python -m mrq.testing.chaos`: see mrq.testing.chaos.cli."""

import sys

from .cli import main

sys.exit(main())
