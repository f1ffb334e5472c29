#!/usr/bin/env python
"""Edit clean or protected images with InstructPix2Pix: decontext edit --family instruct_pix2pix."""

import sys

from decontext.cli.edit import main

sys.exit(main(family="instruct_pix2pix"))
