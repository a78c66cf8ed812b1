"""The project's error base, and the one way a configuration section checks its own values.

Every error the library raises on purpose derives from :class:`TCLError` and carries a one-line
message meant for the user (what is wrong, and where possible how to fix it). Entry points catch
``TCLError`` and print that line (``stages/common.py: run_stage``, ``tcl/cli.py``); anything else
reaching them is a bug and keeps its traceback.

Configuration sections are frozen dataclasses that validate themselves in ``__post_init__`` with
:func:`require`, so a section built in code is checked exactly like one read from ``params.yaml``.
The message names the field (``steps: must be >= 1, got 0``); :func:`tcl.config.from_dict`
prefixes the section's dotted path (``train.steps: ...``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TCLError", "ConfigError", "require", "NO_VALUE"]

#: ``require``'s ``value`` default: the message then ends without ``got ...``.
NO_VALUE: Any = object()


class TCLError(Exception):
    """Base of the project's own errors; ``str(err)`` is one line for the user."""


class ConfigError(TCLError, ValueError):
    """A parameter file is missing, malformed, or holds an invalid value."""


def require(ok: bool, field: str, why: str, value: Any = NO_VALUE) -> None:
    """Raise ``ConfigError("<field>: <why>, got <value>")`` unless ``ok``.

    ``field`` is the name inside the section (``steps``, ``sources.web.out``); the loader adds the
    section's path in front, so one check serves configs from files and from code alike.
    """
    if not ok:
        got = "" if value is NO_VALUE else f", got {value!r}"
        raise ConfigError(f"{field}: {why}{got}")
