"""Restated upstream code is watched: every ``# Restates:`` marker in decontext/ names an importable object
whose source is still the one the restatement was checked against.

Where the package restates a library's code instead of calling it (diffusers' attention processors, whose
q/k/v making it re-does to get between RoPE and the attention call; scheduler maths; a pipeline's latent
encoding or decoding), the restated code carries a one-line marker comment::

    # Restates: diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__ @ diffusers==0.42.1

a dotted importable object path (a module, then attributes) and the release whose source the restatement
was last checked against; a note in parentheses may follow. The fingerprints are kept in a JSON beside
the tests, ``tests/data/upstream_fingerprints.json`` (``{object: {"version": ..., "sha256": ...}}``), not in
the markers, which must stay within the line length: the SHA-256 of ``inspect.getsource(object)``,
dedented, with trailing whitespace stripped from every line.

An upgrade that changes such a source fails here, naming the object and where it is restated. Then read
the upstream change, bring the restated code in line (or convince yourself it needs nothing), and refresh
the fingerprints::

    python tests/test_upstream.py --update

which stores the installed source's fingerprint for every changed or new object, sets the version of
those objects' markers to the installed release, and drops fingerprints no marker names
(``python tests/test_upstream.py`` alone only reports).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "decontext"
FINGERPRINTS = Path(__file__).resolve().parent / "data" / "upstream_fingerprints.json"
UPDATE = "python tests/test_upstream.py --update"
MARKER = re.compile(
    r"^\s*# Restates: (?P<path>[A-Za-z_][\w.]*) @ (?P<dist>[A-Za-z0-9_.-]+)==(?P<version>[\w.+!-]+)(?:\s+\(.*\))?\s*$"
)
# Any comment that starts like a marker: one that does not parse must fail, not silently watch nothing.
LOOSE = re.compile(r"^\s*#\s*restates\b", re.IGNORECASE)


@dataclass(frozen=True)
class Marker:
    file: Path
    line: int
    path: str
    dist: str
    version: str

    @property
    def where(self) -> str:
        return f"{shown(self.file)}:{self.line}"


def shown(file: Path) -> str:
    return str(file.relative_to(ROOT)) if file.is_relative_to(ROOT) else str(file)


def scan(package: Path = PACKAGE) -> tuple[list[Marker], list[str]]:
    """(markers, malformed marker lines) of every Python file under ``package``."""
    found, malformed = [], []
    for file in sorted(package.rglob("*.py")):
        for number, text in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            match = MARKER.match(text)
            if match:
                found.append(Marker(file, number, **match.groupdict()))
            elif LOOSE.match(text):
                malformed.append(f"{shown(file)}:{number}: {text.strip()}")
    return found, malformed


def resolve(path: str):
    """The object a dotted path names: its longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no module of {path!r} can be imported")


def fingerprint(obj) -> str:
    source = textwrap.dedent(inspect.getsource(obj))
    return hashlib.sha256("\n".join(line.rstrip() for line in source.splitlines()).encode()).hexdigest()


def installed(dist: str) -> str:
    return importlib.metadata.version(dist)


def load() -> dict:
    return json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {}


def problems(path: str, markers: list[Marker], stored: dict) -> list[str]:
    """What is wrong with the markers of ``path`` against the ``stored`` fingerprints (nothing: [])."""
    mine = [m for m in markers if m.path == path]
    where = ", ".join(m.where for m in mine)
    try:
        obj = resolve(path)
    except (ImportError, AttributeError) as error:
        return [f"{path} (marked at {where}) does not exist: {error}. Correct the marker's object path."]
    try:
        digest = fingerprint(obj)
    except (OSError, TypeError) as error:
        return [f"{path} (marked at {where}) has no readable source ({error}): name a function or class."]
    entry = stored.get(path)
    if entry is None:
        return [f"no fingerprint stored for {path} (marked at {where}): check the restated code, then run {UPDATE}"]
    found = []
    versions = sorted({m.version for m in mine})
    if versions != [entry["version"]]:
        found.append(f"the markers of {path} say {versions}, its fingerprint is of {entry['version']}: run {UPDATE}")
    if digest != entry["sha256"]:
        dist = mine[0].dist
        found.append(
            f"UPSTREAM CHANGED: the source of {path} differs from {dist}=={entry['version']}'s (installed: "
            f"{dist}=={installed(dist)}). Re-check the code restated at {where} against the new source, bring it in "
            f"line, then update the fingerprint: {UPDATE}"
        )
    return found


MARKERS, MALFORMED = scan()


def test_markers_are_found_and_well_formed():
    assert MARKERS, "the scan found no '# Restates:' marker in decontext/"
    assert not MALFORMED, "markers that do not parse ('# Restates: <dotted.path> @ <dist>==<version>'):\n" + "\n".join(
        MALFORMED
    )


@pytest.mark.parametrize("path", sorted({m.path for m in MARKERS}))
def test_restated_upstream_source_is_unchanged(path):
    found = problems(path, MARKERS, load())
    assert not found, "\n".join(found)


def test_every_fingerprint_belongs_to_a_marker():
    stale = sorted(set(load()) - {m.path for m in MARKERS})
    assert not stale, f"fingerprints of objects no marker names any more: {stale} ({UPDATE} drops them)"


def test_a_marker_of_a_missing_or_changed_object_fails(tmp_path):
    """The checks themselves: a marker naming nothing, a changed source and a missing fingerprint all fail."""
    real = "diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__"
    (tmp_path / "restated.py").write_text(
        f"# Restates: {real}.nothing @ diffusers==0.42.1\n"
        "# Restates: diffusers.models.transformers.transformer_flux.NoSuchProcessor @ diffusers==0.42.1\n"
        f"# Restates: {real} @ diffusers==0.42.1  (a note)\n"
        "# restates diffusers.Something\n"
    )
    markers, malformed = scan(tmp_path)
    assert [m.path for m in markers] == [
        f"{real}.nothing",
        real.replace("FluxAttnProcessor.__call__", "NoSuchProcessor"),
        real,
    ]
    assert len(malformed) == 1
    for marker in markers[:2]:
        assert "does not exist" in problems(marker.path, markers, {})[0]
    assert "no fingerprint stored" in problems(real, markers, {})[0]
    changed = problems(real, markers, {real: {"version": "0.42.1", "sha256": "0" * 64}})
    assert (
        len(changed) == 1 and changed[0].startswith(f"UPSTREAM CHANGED: the source of {real}") and UPDATE in changed[0]
    )
    assert problems(real, markers, {real: {"version": "0.42.1", "sha256": fingerprint(resolve(real))}}) == []


def update() -> int:
    """Refresh the fingerprints (and the versions in the markers of changed or new objects); see the docstring."""
    markers, malformed = scan()
    if malformed:
        print("fix these markers first:\n" + "\n".join(malformed))
        return 1
    stored, fresh = load(), {}
    for path in sorted({m.path for m in markers}):
        mine = [m for m in markers if m.path == path]
        digest = fingerprint(resolve(path))
        entry = stored.get(path)
        if entry is not None and entry["sha256"] == digest:
            fresh[path] = entry
            continue
        fresh[path] = {"version": installed(mine[0].dist), "sha256": digest}
        print(f"{'changed' if entry else 'new'}: {path} ({mine[0].dist}=={fresh[path]['version']})")
    for path in sorted(set(stored) - set(fresh)):
        print(f"dropped: {path}")
    for file in sorted({m.file for m in markers}):
        lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
        moved = [m for m in markers if m.file == file and m.version != fresh[m.path]["version"]]
        for m in moved:
            lines[m.line - 1] = lines[m.line - 1].replace(f"=={m.version}", f"=={fresh[m.path]['version']}", 1)
            print(f"marker {m.where}: {m.version} -> {fresh[m.path]['version']}")
        if moved:
            file.write_text("".join(lines), encoding="utf-8")
    FINGERPRINTS.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
    return 0


def report() -> int:
    markers, malformed = scan()
    stored = load()
    found = malformed + [p for path in sorted({m.path for m in markers}) for p in problems(path, markers, stored)]
    print("\n".join(found) or f"{len({m.path for m in markers})} restated objects, all unchanged")
    return 1 if found else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="store the installed sources' fingerprints")
    sys.exit(update() if parser.parse_args().update else report())
