"""``python -m pretraining``: see `pretraining.cli`."""

import sys

from pretraining.cli import main

sys.exit(main())
