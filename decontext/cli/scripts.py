"""The console scripts of pyproject's [project.scripts]: each runs one command of the front door."""

import sys

from . import run


def attack():
    sys.exit(run("attack"))


def edit():
    sys.exit(run("edit"))


def evaluate():
    sys.exit(run("eval"))


def sweep():
    sys.exit(run("sweep"))


def purify():
    sys.exit(run("purify"))


def t2i():
    sys.exit(run("t2i"))


def collect_anchors():
    sys.exit(run("collect-anchors"))


def erase_rate():
    sys.exit(run("erase-rate"))


def cluster():
    sys.exit(run("cluster"))


def app():
    sys.exit(run("app"))


def amortize():
    sys.exit(run("amortize"))


def benchmark():
    sys.exit(run("benchmark"))


def serve():
    sys.exit(run("serve"))
