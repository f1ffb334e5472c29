#!/usr/bin/env python
"""Edit clean or protected images with Step1X-Edit: decontext edit --family step1x_edit."""

import sys

from decontext.cli.edit import main

sys.exit(main(family="step1x_edit"))
