#!/usr/bin/env python
"""Score a run folder (metrics.csv, summary.md/json, report.html): decontext eval. See docs/EVALUATION.md."""

import sys

from decontext.cli.evaluate import main

sys.exit(main())
