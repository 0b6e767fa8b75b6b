"""`python -m itmatch` runs the CLI (also what `torchrun -m itmatch` starts on each rank)."""

import sys

from itmatch.cli import main

sys.exit(main())
