"""`python -m rlm`: the `rlm` command line."""

import sys

from rlm.cli import main

sys.exit(main())
