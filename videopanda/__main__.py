"""`python -m videopanda ...` is the `videopanda` command."""

import sys

from .cli import main

sys.exit(main())
