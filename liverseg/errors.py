"""Exceptions raised for bad user input: each names the offending file and what is wrong."""

from __future__ import annotations

from pathlib import Path


class LiverSegError(Exception):
    """Base class of the errors this package raises for bad input."""


class InputError(LiverSegError):
    """A file given by the user cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DatasetProblems(LiverSegError):
    """A dataset failed verification; ``problems`` lists every problem found."""

    def __init__(self, root: str | Path, problems: list[str]) -> None:
        self.root = Path(root)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{root}: {len(self.problems)} problem(s) found:\n{lines}")
