"""Shared test settings."""

import os

from hypothesis import settings

# CI must be reproducible: the same examples on every run (a failure found while
# developing is kept in the local example database and replayed there).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
