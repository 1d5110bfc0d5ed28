"""The project's error hierarchy.

Every error a user can cause (bad input, bad files, bad config) is a `DreamLayerError`.
The CLIs catch exactly this base class, print its message as one line on stderr and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DreamLayerError(Exception):
    """Base class for every user-facing error of dreamlayer-jax."""

    exit_code = 2

    def one_line(self) -> str:
        """The message as a single line, prefixed with the error's kind."""
        text = " ".join(str(self).split())
        return f"error: {text}"


class ConfigError(DreamLayerError):
    """A configuration value (model config, scheduler config, train config) is invalid."""


class WeightsError(DreamLayerError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


class InputError(DreamLayerError):
    """A user input (scene, prompt, box, image, CLI argument) is invalid."""


class DataError(DreamLayerError):
    """A dataset or scene file cannot be read or has the wrong content."""


class CheckpointError(DreamLayerError):
    """A training checkpoint cannot be saved, found or restored."""


class OutputError(DreamLayerError):
    """Results cannot be written where they were asked to go."""


class NumericalError(DreamLayerError):
    """A computation produced non-finite values (NaN or Inf)."""
