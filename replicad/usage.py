"""The one usage error of the command-line tools (``replicad-cli``, ``replicad-local``).

It lives alone, with no imports of ours, so that every tool can raise and catch the same
class without importing another tool.  A tool prints its message as one line on stderr
and exits 2.
"""


class UsageError(Exception):
    """Bad command line or local input; the message is one line, the exit status 2."""
