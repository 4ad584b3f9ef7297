"""The one error hierarchy. Every error a user can cause is an `ArchlabError`: the CLI prints it as one
line, `archlab VERB: error: ...`, and exits 2. Anything else is a bug and keeps its traceback."""
from __future__ import annotations


class ArchlabError(Exception):
    """A problem with the user's input, files or environment; the message says what and where."""


class ConfigError(ArchlabError, ValueError):
    """A configuration value or key is wrong; the message names it and what is allowed."""


class DataError(ArchlabError, RuntimeError):
    """Data is missing or malformed; the message names the file (and line) and how to fix it."""


class CheckpointError(ArchlabError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not fit; the message names the file."""


class TrainingDiverged(ArchlabError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class HFImportError(ConfigError):
    """A Hugging Face folder cannot be read into (or written from) an archlab model; the message says why."""
