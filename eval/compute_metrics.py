#!/usr/bin/env python
"""Score a run folder: metrics.csv, inputs.csv, summary.md, summary.json and report.html.

    python eval/compute_metrics.py --run runs/<name>
    python eval/compute_metrics.py --source S --protected P --edits-clean EC --edits-protected EP --out OUT

See docs/EVALUATION.md for the metrics, their directions and where weights are looked up.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from decontext.metrics.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
