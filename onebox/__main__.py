"""``python -m onebox``: see ``onebox.cli``."""

import sys

from onebox.cli import main

sys.exit(main())
