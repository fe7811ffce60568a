"""Typed errors. Library code raises these with a message naming the file and the fix;
only `tsmixit.cli` prints them and exits."""


class TsmixitError(Exception):
    """Base class of every error tsmixit reports to a user."""


class AudioError(TsmixitError):
    """An audio file is missing, unreadable, empty, silent, non-finite or of the wrong shape."""


class ManifestError(TsmixitError):
    """A manifest or corpus folder is missing, malformed or inconsistent."""


class ConfigError(TsmixitError):
    """A recipe config has an unknown key, a wrong type or an impossible value."""


class CheckpointError(TsmixitError):
    """A checkpoint is missing or corrupt."""


class ModelFileError(TsmixitError):
    """A path is not a tsmixit model, or the model cannot serve the request."""


class TrainingError(TsmixitError):
    """Training diverged (NaN/inf loss) or cannot proceed."""
