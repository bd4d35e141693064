"""The errors a user is shown as one line (exit code 2 on the command line, a message in the
dashboard), torch-free: a mistake in what was asked (``UserError``: a setting that does not fit
``PresetError``, a model or data of the user's that cannot be used ``ModelError``,
``DataError``), and why a run cannot start on this machine (``CannotStart``)."""

from __future__ import annotations


class CannotStart(Exception):
    """A run cannot start here; the message says what is missing and what to do."""


class DatasetUnavailable(CannotStart):
    """A data set could not be found or fetched; the message says where we looked and what to do."""


class DeviceUnavailable(CannotStart):
    """The device the config asks for does not exist on this machine."""


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""


class PresetError(UserError, ValueError):
    """A preset file, override or value that does not fit the run config's schema; the message
    names where it came from, the key, the value and what is allowed."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or not an rlr checkpoint."""


class ModelError(UserError):
    """A model the settings name that cannot be built or started from: a factory that is not
    there or returns no module, arguments it does not take, weights that do not fit. The
    message names the setting, the value and what is wrong."""


class DataError(UserError):
    """Data the settings name that cannot be read: a folder or file that is not there or holds
    no images, a tensor file without the expected keys, images outside [0, 1]."""


class RunFailed(Exception):
    """A run ended in the failed state (a run of a comparison, a rank of a data-parallel run);
    the message says which and why."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): what a one-line
    message quotes of an error raised by a library or the user's code."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
