"""This project's own experiments, outside the installed library: the premise study (does an editor read
identity through target->context attention early?) and the training of the embedded toy editors.
Run from the repository root, e.g. ``python -m experiments.toy_train --version toy-v2`` (docs/TOY.md)."""
