"""Errors that end a command with one clear line instead of a traceback."""

from __future__ import annotations

import os


class CrackhpcError(Exception):
    """Base class: the CLI prints `error: <message>` and exits 2."""


class ConfigError(CrackhpcError):
    """A sweep YAML is malformed; the message names the file and the key."""


class DataError(CrackhpcError):
    """A dataset folder is missing, has an unknown layout, or cannot be split."""


class WeightsError(CrackhpcError):
    """Pretrained weights are not in the offline cache or fail their checksum."""


class DamagedFileError(CrackhpcError):
    """A file crackhpc wrote earlier cannot be read back (truncated, overwritten, not ours)."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str):
        self.path = path
        super().__init__(f"{path}: {problem}; {fix}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the interrupted command did about it: the CLI prints it as its one line."""
