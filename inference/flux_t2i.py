#!/usr/bin/env python
"""Text-to-image with FLUX.1-dev, optionally under UVR: decontext t2i."""

import sys

from decontext.cli.t2i import main

sys.exit(main())
