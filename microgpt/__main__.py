"""`python -m microgpt ...`: the command line (see microgpt/cli.py)."""
import sys

from microgpt.cli import main

sys.exit(main())
