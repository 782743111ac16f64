"""The one exception type that library code raises for anything a user can fix.

The CLI turns it into a one-line message and a non-zero exit code; everything else
is a bug and keeps its traceback.
"""


def first_line(e: BaseException, limit: int = 200) -> str:
    """What an error from another library says, in one line that fits ours (its type if it says nothing)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class FlowerftError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class ConfigError(FlowerftError):
    """A configuration key is unknown, has the wrong type or an impossible value."""


class DataError(FlowerftError):
    """The data source is missing, empty, unreadable or unreachable."""


class OfflineError(FlowerftError):
    """Something had to be downloaded and the network is not reachable."""


class Interrupted(FlowerftError):
    """Training was stopped with Ctrl-C; the message says how to resume."""


class WorkerLost(FlowerftError):
    """A multi-worker run lost a peer; every finished epoch is saved, the message says how to restart."""


class EvaluationFailed(FlowerftError):
    """`report` wrote its page, but evaluating the run for it failed (`page` says where the page is)."""

    def __init__(self, message: str, page):
        super().__init__(message)
        self.page = page
