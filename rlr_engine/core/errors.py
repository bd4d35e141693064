"""Why a run cannot start on this machine: plain exceptions, torch-free, caught as one kind
(``CannotStart``) wherever a start is reported to the user."""

from __future__ import annotations


class CannotStart(Exception):
    """A run cannot start here; the message says what is missing and what to do."""


class DatasetUnavailable(CannotStart):
    """A data set could not be found or fetched; the message says where we looked and what to do."""


class DeviceUnavailable(CannotStart):
    """The device the config asks for does not exist on this machine."""
