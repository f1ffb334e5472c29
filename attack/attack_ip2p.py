#!/usr/bin/env python
"""Protect images against InstructPix2Pix (PhotoGuard's encoder attack by default):
decontext attack --family instruct_pix2pix."""

import sys

from decontext.cli.attack import main

sys.exit(main(family="instruct_pix2pix"))
