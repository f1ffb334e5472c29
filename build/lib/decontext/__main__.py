"""``python -m decontext <command>``: the one front door (decontext.cli)."""

import sys

from decontext.cli import main

sys.exit(main())
