"""The one exception type of the synthetic world, shared by all its modules.

It subclasses :class:`ValueError`, so callers that validate parameters can catch either; the
stage script turns it into a one-line command-line error.
"""

from __future__ import annotations

from ...errors import TCLError

__all__ = ["SyntheticError"]


class SyntheticError(TCLError, ValueError):
    """Invalid parameters, an output path that is not ours, or a vocabulary name unknown to mmseg."""
