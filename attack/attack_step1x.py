#!/usr/bin/env python
"""Protect images against Step1X-Edit: decontext attack --family step1x_edit."""

import sys

from decontext.cli.attack import main

sys.exit(main(family="step1x_edit"))
