"""Errors a user can cause. Each message names the offending key, file, split, column or row.

They subclass ``ValueError``/``FileNotFoundError`` so generic callers can catch them, and the CLI
prints them as one paragraph without a traceback.
"""

from __future__ import annotations


class PDDError(Exception):
    """Base class of every error pdd-hub raises on bad input."""


class DatasetFormatError(PDDError, ValueError):
    """The source dataset cannot be used: missing column, undecodable image, bad labels, ..."""


class ExportFormatError(PDDError, ValueError):
    """An exported PDD folder is incomplete, inconsistent or of an unknown format version."""


class ExportNotFoundError(PDDError, FileNotFoundError):
    """An exported PDD folder (or one of its required files) does not exist."""


class HubPushError(PDDError, RuntimeError):
    """The Hub refused an upload (no or bad token, no write access, ...)."""


class ConfigError(PDDError, ValueError):
    """A config key is unknown or a config value is invalid."""


class ModelNotFoundError(PDDError, ValueError):
    """timm does not know the requested model name, or the model cannot take the images."""


class DistillationDivergedError(PDDError, RuntimeError):
    """Distillation kept producing non-finite values after restoring the last good state."""


class UnknownNameError(PDDError, ValueError):
    """A name (of a base method, a selection method, ...) that no registry entry has."""


class CorruptStateError(PDDError, ValueError):
    """A file pdd-hub wrote earlier (checkpoint, stage, preprocessing, progress, evaluation run) is
    damaged: truncated by a full disk, overwritten, or from another program."""


class OutputError(PDDError, OSError):
    """An output folder cannot be used: locked by another run, not writable, or its disk is full."""


class ResultsFormatError(PDDError, ValueError):
    """An evaluation results file (``pdd-hub eval --output``) is unreadable or belongs to another export."""
