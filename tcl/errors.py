"""The project's error base.

Every error the library raises on purpose derives from :class:`TCLError` and carries a one-line
message meant for the user (what is wrong, and where possible how to fix it). Entry points catch
``TCLError`` and print that line; anything else reaching them is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["TCLError"]


class TCLError(Exception):
    """Base of the project's own errors; ``str(err)`` is one line for the user."""
