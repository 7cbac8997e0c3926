"""User-facing errors.

Every problem caused by user input (config, files, data, checkpoints) is raised as a
:class:`DetkdError` with a one-line message that names the offending key, file or value.
The command-line tools print ``error: <message>`` and exit with status 2 instead of a
traceback (``--debug`` shows the traceback).
"""


class DetkdError(Exception):
    """A problem with the user's input, reported as one clear line."""
