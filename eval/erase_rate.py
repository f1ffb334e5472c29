#!/usr/bin/env python
"""Erase rate of a concept in regulated generations (UVR), against the unregulated ones: decontext erase-rate."""

import sys

from decontext.cli.erase_rate import main

sys.exit(main())
