#!/usr/bin/env python
"""Edit clean or protected images with FLUX.1-Kontext: decontext edit --family flux_kontext."""

import sys

from decontext.cli.edit import main

sys.exit(main(family="flux_kontext"))
