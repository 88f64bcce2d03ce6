"""`python -m histo` runs the `histo` command."""

import sys

from histo.cli import main

sys.exit(main())
