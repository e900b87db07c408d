"""``python -m lmtui``."""

import sys

from lmtui.cli import main

sys.exit(main())
