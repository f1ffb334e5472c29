#!/usr/bin/env python
"""Edit clean or protected images with Qwen-Image-Edit: decontext edit --family qwen_image_edit."""

import sys

from decontext.cli.edit import main

sys.exit(main(family="qwen_image_edit"))
