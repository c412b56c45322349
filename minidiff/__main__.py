"""`python -m minidiff ...`: see minidiff/cli.py."""
import sys

from minidiff.cli import main

sys.exit(main())
