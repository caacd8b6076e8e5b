"""``python -m instantft``."""

import sys

from instantft.cli import main

sys.exit(main())
