"""One error base: every public exception class the library defines derives from ``tcl.errors.TCLError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tcl
from tcl.errors import TCLError

# Raised and caught inside one module (never reaches a caller): not part of the library's interface.
_INTERNAL = {"tcl.config.DuplicateKeyError"}


def _exception_classes():
    for info in pkgutil.walk_packages(tcl.__path__, "tcl."):
        if info.name.endswith("_entry"):  # MLflow's models-from-code entry runs set_model on import
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning) \
                    and obj.__module__ == module.__name__ \
                    and not name.startswith("_"):
                yield f"{module.__name__}.{name}", obj


def test_every_library_error_derives_from_tcl_error():
    classes = dict(_exception_classes())
    assert len(classes) >= 15  # the walk found the package's errors
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, TCLError) and name not in _INTERNAL)
    assert outside == []
