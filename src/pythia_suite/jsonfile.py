"""Reading a JSON file: one reader whose errors name the file, the line and the column."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_RAISE = object()


class JSONFileError(ValueError):
    """A JSON file that cannot be read, is not valid JSON, or holds the wrong kind of value.

    The message starts with the file's path; `path` and `reason` hold the parts.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_json(path: str | os.PathLike, *, kind: type | None = None, missing: Any = _RAISE) -> Any:
    """The JSON value stored in `path`.

    Returns `missing` when the file does not exist and `missing` is given. Raises
    `FileNotFoundError` for an absent file otherwise, and `JSONFileError` (naming the file) when
    it cannot be read, is not UTF-8, is not valid JSON (with line and column), or when `kind` is
    given and the value is not an instance of it (`dict` for an object, `list` for an array).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is _RAISE:
            raise
        return missing
    except UnicodeDecodeError as err:
        raise JSONFileError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise JSONFileError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise JSONFileError(
            path, f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    if kind is not None and not isinstance(value, kind):
        names = {dict: "a JSON object", list: "a JSON array"}
        raise JSONFileError(
            path, f"expected {names.get(kind, kind.__name__)}, found {type(value).__name__}"
        )
    return value
