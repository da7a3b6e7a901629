"""`python -m motioncrafter_cli ...` is the `motioncrafter` command."""

import sys

from motioncrafter_cli import main

sys.exit(main())
