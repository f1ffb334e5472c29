"""File names as people and text files see them.

A file name may be any byte string the file system allows; Python keeps bytes that are not UTF-8 as
lone surrogates (``os.fsdecode``), which cannot be printed on a UTF-8 terminal or written to a UTF-8
file. ``shown`` turns them into ``\\xNN`` escapes, so messages, CSV and Markdown stay readable and
valid; JSON keeps the exact name (``json.dumps`` escapes surrogates as ``\\udcNN`` and reads them back).
``csv_cell`` also keeps a text cell (a file name, a prompt) from being run as a spreadsheet formula.
"""

from __future__ import annotations

import os


def shown(text) -> str:
    """``text`` (a path, a message that holds one, or anything str() takes) with non-UTF-8 bytes as \\xNN."""
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def csv_cell(text) -> str:
    """``shown(text)`` made safe for a CSV cell opened in a spreadsheet: text that starts like a formula
    (``=HYPERLINK(...)``, ``+cmd``, ``@SUM``) gets a leading ``'`` (OWASP's advice), numbers such as
    ``-0.5`` stay as they are."""
    value = shown(text)
    if value.startswith(FORMULA_STARTS):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value
