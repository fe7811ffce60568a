"""tsmixit: Teacher-Student MixIT speech separation from mixtures without clean sources."""

from tsmixit.errors import TsmixitError

__version__ = "0.1.0"
__all__ = ["TsmixitError", "__version__", "load_model"]


def load_model(path):
    """Load an exported separator (safetensors + JSON config) as a
    `tsmixit.inference.Separator`; never unpickles (see `tsmixit.model_files.load_model`)."""
    from tsmixit.model_files import load_model as _load

    return _load(path)
