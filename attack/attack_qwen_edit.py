#!/usr/bin/env python
"""Protect images against Qwen-Image-Edit: decontext attack --family qwen_image_edit."""

import sys

from decontext.cli.attack import main

sys.exit(main(family="qwen_image_edit"))
