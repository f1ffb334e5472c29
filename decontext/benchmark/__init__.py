"""The benchmark: every protection against adaptive attackers, one command, one leaderboard.

``spec`` (TOML specs, shipped in ``specs/``, checked before anything loads), ``cells`` (what a cell is
and how it is computed, through ``protect()``, the editor's own ``edit`` and the metrics), ``records``
(one JSON record per cell: resume, no recomputation, digests), ``report`` (leaderboard.md/.html,
results.json from the records alone). The command: ``decontext benchmark SPEC --out DIR``
(docs/BENCHMARK.md). Importing this package loads nothing heavy.
"""
