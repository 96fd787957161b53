"""Errors a user can fix: bad settings, missing or bad input files, a state that must not be used.

The command line prints such an error's message and exits with a non-zero status, without a Python
traceback; any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A setting, file or state the user has to change; the message names it and what to do."""


class SettingsError(UserError, ValueError):
  """A config setting or command-line flag with a value that is not allowed."""


class NonFiniteError(UserError, FloatingPointError):
  """Parameters, optimizer state, a metric or generated images that are not finite."""
