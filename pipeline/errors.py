"""The one exception type a stage raises for bad input: the CLI prints its message as one line."""


class PipelineError(Exception):
    """A problem the user can fix; the message names the cause and the fix."""
