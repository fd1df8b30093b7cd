"""Errors that mean "the input is wrong", not "the program is wrong".

The ``gmd26`` command line (:func:`benchmark.cli.main`) prints these as one line,
``gmd26 <command>: <message>``, and exits with status 2; the message names the item (option,
file, folder) and says what to do. Other modules' input errors are treated the same way
(``DataFormatError``, ``ManifestError``, ``CheckpointError``, ``FragmentError``,
``BatchError``, ``PlanMismatchError``, ``BuildConfigError``, missing files); see
:data:`benchmark.cli.USER_ERRORS`.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A command's argument, input file or folder is refused before any work starts."""


class RunFolderError(UsageError):
    """An output folder cannot be used: it is a file, cannot be written, or holds another
    run's results that would be overwritten."""


class ResumeMismatchError(UsageError):
    """``--resume`` was asked of a checkpoint written by another run (other task, data,
    preset, seed or model)."""
