"""The scale-out suite: every path past one machine, on the real engine it names, in local mode.

Every test here is marked ``scale`` (``make test-scale``); ``make test`` and ``make test-all`` leave them out.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/scale/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.scale)
