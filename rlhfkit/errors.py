"""The one base class of user errors: bad config, bad data, a missing file or model.

The CLI turns any `UserError` into one line on stderr and exit status 2; everything else is a
bug and keeps its traceback. `config.ConfigError` and `data.DataError` derive from it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix from the message alone (no traceback is shown for it)."""
