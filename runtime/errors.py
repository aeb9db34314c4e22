"""The kit's exceptions: one base class, so that embedding code can catch everything we raise.

Each subclass also derives from the builtin a caller would naturally expect (``ValueError`` for bad
input, ``ImportError`` for a missing package, ``OSError`` for I/O), so ``except ValueError`` keeps working.
Messages say what was received, what was expected and how to fix it.
"""

from __future__ import annotations


class NetVLADKitError(Exception):
    """Base class of every error netvlad-kit raises on purpose.

    ``exit_code`` is what a command exits with when this error ends it (see ``runtime.cli.console``):
    2 for bad input or usage (the default: fix the command line, the file or the data and rerun),
    1 for a run that failed on its own (a backend, a parity gate, a stream that died).
    """

    exit_code: int = 2


class ConfigError(NetVLADKitError, ValueError):
    """A configuration value or command-line option is invalid."""


class DatasetError(NetVLADKitError, ValueError):
    """A dataset (CSV, .mat file, image folder) is missing, malformed or unusable."""


class ModelCardError(NetVLADKitError, ValueError):
    """An artifact has no model card, an invalid one, or one of a newer format version."""


class ArtifactError(NetVLADKitError, ValueError):
    """A checkpoint, ONNX model, engine or map is missing, truncated, corrupt or from another tool."""


class MapMismatchError(NetVLADKitError, ValueError):
    """A map was built by a different model (fingerprint) or with a different descriptor dimension."""


class SourceError(NetVLADKitError, OSError):
    """A frame source (camera, video, folder, RTSP stream) cannot be opened or has failed for good."""


class BackendError(NetVLADKitError, RuntimeError):
    """An inference backend cannot be created or has failed (for example a precision it cannot honour)."""

    exit_code = 1


class ParityError(NetVLADKitError):
    """An exported artifact missed its parity gate against the PyTorch reference."""

    exit_code = 1


class RunFailedError(NetVLADKitError, RuntimeError):
    """A run that started well failed on its own (non-finite descriptors, a stream that died for good)."""

    exit_code = 1


class OutputError(NetVLADKitError, OSError):
    """An output path cannot be written: it holds something the kit did not write, another run holds its
    lock, or it is not writable."""


class MissingDependencyError(NetVLADKitError, ImportError):
    """An optional package is needed for the requested feature; the message names the extra to install."""
