#!/usr/bin/env python
"""Edit clean or protected images with FLUX.2: decontext edit --family flux2."""

import sys

from decontext.cli.edit import main

sys.exit(main(family="flux2"))
