"""User-facing errors.

Anything the user can fix (a bad file, a wrong config key, a model path that is not a model)
is raised as :class:`UserError`. The CLI prints its message as one line and exits with code 2;
no traceback is shown. A message may hold several problems found at once (every bad config
key), one per line: the CLI prints each as its own ``potstill: error:`` line. Bugs stay ordinary
exceptions.
"""


class UserError(Exception):
    """A problem with the user's input; ``str(err)`` is the line (or lines, one per problem) shown to them."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class Incomplete(UserError):
    """The command finished short of its goal (``max_cost`` reached, prompts that failed): what was done
    is kept, and a rerun continues. The CLI prints the one line and exits with code 3."""

    exit_code = 3
