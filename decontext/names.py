"""File names as people and text files see them.

A file name may be any byte string the file system allows; Python keeps bytes that are not UTF-8 as
lone surrogates (``os.fsdecode``), which cannot be printed on a UTF-8 terminal or written to a UTF-8
file. ``shown`` turns them into ``\\xNN`` escapes, so messages, CSV and Markdown stay readable and
valid; JSON keeps the exact name (``json.dumps`` escapes surrogates as ``\\udcNN`` and reads them back).
"""

from __future__ import annotations

import os


def shown(text) -> str:
    """``text`` (a path, a message that holds one, or anything str() takes) with non-UTF-8 bytes as \\xNN."""
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")
