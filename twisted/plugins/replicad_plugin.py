"""twistd dropin: `twistd -n replicad --id N`.

Kept tiny on purpose: twistd imports every dropin to list its subcommands, so this
only names the plugin; replicad.tap is imported when `replicad` is actually run.
"""

from twisted.application.service import ServiceMaker

replicad = ServiceMaker(
    "replicad",
    "replicad.tap",
    "A replica of the replicad replicated key-value store",
    "replicad",
)
