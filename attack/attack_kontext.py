#!/usr/bin/env python
"""Protect images against FLUX.1-Kontext with DeContext (or a baseline, --method):
decontext attack --family flux_kontext."""

import sys

from decontext.cli.attack import main

sys.exit(main(family="flux_kontext"))
