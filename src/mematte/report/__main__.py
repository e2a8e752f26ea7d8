"""``python -m mematte.report``."""

import sys

from mematte.report.cli import main

sys.exit(main())
