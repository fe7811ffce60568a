"""The local web page (`tsmixit serve`): separate a recording and listen to each voice, and
listen to a run's test mixtures beside its results table. See `tsmixit.serve.app`."""

from tsmixit.serve.app import DEFAULT_MAX_UPLOAD_MB, ServedModel, create_app, load_models

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "ServedModel", "create_app", "load_models"]
