"""Exceptions the CLI maps to exit codes; core raises them, never prints."""


class MbqError(Exception):
    """A problem the user can fix (bad input, bad file, bad config): exit 2."""

    exit_code = 2


class RunFailed(Exception):
    """A run that started but could not finish (e.g. diverged): exit 1."""

    exit_code = 1
