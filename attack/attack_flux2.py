#!/usr/bin/env python
"""Protect images against FLUX.2 ([dev] or [klein]): decontext attack --family flux2."""

import sys

from decontext.cli.attack import main

sys.exit(main(family="flux2"))
