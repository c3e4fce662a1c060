"""One exception type for every input problem the harness reports to a person."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class HarnessError(Exception):
    """A problem with the user's input (config, weights, prompts, sizes), stated plainly."""


def read_json_object(path: Path, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
                     ) -> dict[str, Any]:
    """A JSON file whose top level is an object, or a HarnessError naming the file and what is
    wrong: not UTF-8, not JSON, nested too deep for the parser, or another type at the top.
    (`object_pairs_hook` may raise ValueError for content it refuses; its message is kept.)"""
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"), object_pairs_hook=object_pairs_hook)
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise HarnessError(f"{path}: JSON nested too deep to read") from None
    except ValueError as exc:
        raise HarnessError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise HarnessError(f"{path}: expected a JSON object at the top, found {type(doc).__name__}")
    return doc
