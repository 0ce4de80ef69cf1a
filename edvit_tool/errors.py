"""The one error family the CLI turns into `Error: <message>` and exit code 2.

Anything else that escapes is our bug and keeps its traceback.
"""


class EdvitError(Exception):
    """A user-facing error: the message names the thing, the expectation and the fix."""

    exit_code = 2


class RecipeError(EdvitError):
    """A recipe / config file is invalid."""


class DataError(EdvitError):
    """A dataset cannot be loaded or is unusable."""


class CheckpointError(EdvitError):
    """A checkpoint cannot be loaded or does not match the model."""


class ModelError(EdvitError):
    """The requested model is not supported."""


class ArtifactError(EdvitError):
    """A build directory or artifact is missing, corrupt or inconsistent."""


class ExportError(EdvitError):
    """Export / quantisation cannot be done as asked."""


class SshError(EdvitError):
    """A board cannot be reached or a remote command failed."""


class CheckFailed(EdvitError):
    """A check/gate ran and failed: exit code 1, not a usage error."""

    exit_code = 1
