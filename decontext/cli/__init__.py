"""The one front door: ``python -m decontext <command>`` and the console scripts (``decontext-attack``,
``decontext-edit``, ``decontext-eval``, ...), all from this package's parsers.

Every command's parser is built from data (``decontext.editors.FAMILIES``, ``decontext.methods.METHODS``)
without importing torch, diffusers or transformers, so ``--help`` and flag errors answer at once; the
heavy libraries load only when a command runs. The brief's scripts (``attack/``, ``inference/``,
``eval/``) are three-line shims over the same functions.
"""

from __future__ import annotations

import importlib
import sys

# command -> ("module:function", what it does)
COMMANDS = {
    "demo": (
        "decontext.cli.demo:main",
        "the main job on the embedded toy editor: protect, edit, score (bash scripts/demo.sh)",
    ),
    "attack": ("decontext.cli.attack:main", "protect images against an editor (DeContext and the other methods)"),
    "edit": ("decontext.cli.edit:main", "edit clean or protected images with an editor's real pipeline"),
    "eval": (
        "decontext.cli.evaluate:main",
        "score a run folder: identity, edit success, image quality; summary and report",
    ),
    "app": (
        "decontext.cli.app:main",
        "the local page: protect photos and preview an edit before/after (pip install decontext[app])",
    ),
    "cluster": (
        "decontext.cli.cluster:main",
        "protect many photos as a Ray Data job, exactly once (pip install decontext[cluster])",
    ),
    "serve": (
        "decontext.cli.serve:main",
        "an HTTP service that protects photos at upload time, batched, on 127.0.0.1 (pip install decontext[serve])",
    ),
    "amortize": (
        "decontext.cli.amortize:main",
        "train an amortized protector (one forward pass per photo) with any method's loss",
    ),
    "sweep": ("decontext.cli.sweep:main", "a grid of protection settings, one run folder per point, one table"),
    "purify": ("decontext.cli.purify:main", "purified copies of a run's protected images (JPEG, resize, blur, ...)"),
    "benchmark": (
        "decontext.cli.benchmark:main",
        "every protection against adaptive attackers (regeneration, a learned remover, worst case): one leaderboard",
    ),
    "runs": ("decontext.cli.runs:main", "start a run folder (sources as PNG, run.json)"),
    "t2i": ("decontext.cli.t2i:main", "text-to-image with FLUX.1-dev, optionally under UVR"),
    "collect-anchors": ("decontext.cli.collect:main", "UVR anchors of an unsafe concept"),
    "erase-rate": ("decontext.cli.erase_rate:main", "erase rate of a concept under a regulator"),
    "toy-faces": ("decontext.cli.toy:faces", "write held-out faces of the toy world as PNG"),
    "toy-eval": ("decontext.cli.toy:evaluate", "held-out evaluation of a toy editor"),
}


def run(command: str, argv=None) -> int:
    """Run one command with ``argv`` (its own flags); its exit code."""
    module, _, function = COMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module), function)(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(c) for c in COMMANDS)
        print("usage: python -m decontext <command> [flags]   (or decontext-<command>)\n\ncommands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:<{width}}  {what}")
        print("\n'python -m decontext <command> --help' shows a command's flags.")
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__

        print(f"decontext {__version__}")
        return 0
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"error: unknown command {command!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return run(command, argv)


def console() -> None:
    """The ``decontext`` console script."""
    sys.exit(main())
