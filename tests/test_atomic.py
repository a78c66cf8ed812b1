"""tcl.atomic's errors: every failure to write an output is a TCLError (one line), an OSError still.

(A full disk, and the temporaries a killed write leaves: tests/train/test_disk_full.py.)
"""

from __future__ import annotations

import errno

import pytest

from tcl.atomic import DiskFullError, OutputError, output_errors, write_json_atomic
from tcl.errors import TCLError


def _os_error_of(action) -> OSError:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value


def test_an_output_behind_a_file_is_an_output_error_with_the_os_line(tmp_path):
    (tmp_path / "report").write_text("a file where the output folder should be")
    target = tmp_path / "report" / "report.json"
    plain = _os_error_of(lambda: target.parent.mkdir(parents=True, exist_ok=True))  # what the OS says
    with pytest.raises(OutputError) as caught:
        write_json_atomic(target, {"x": 1})
    err = caught.value
    assert isinstance(err, TCLError) and isinstance(err, OSError) and not isinstance(err, DiskFullError)
    assert str(err) == str(plain) and (err.errno, err.filename) == (plain.errno, plain.filename)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_output_errors_names_a_full_disk_after_the_output_and_passes_the_rest(tmp_path):
    out = tmp_path / "world"
    with pytest.raises(DiskFullError) as caught, output_errors(out), open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")  # ENOSPC, from the kernel, on a file the caller wrote itself
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    assert str(caught.value) == f"no space left on device writing {out} (free space on that disk, then rerun)"

    (tmp_path / "file").write_text("")
    inside = tmp_path / "file" / "x"
    plain = _os_error_of(lambda: inside.write_text("x"))
    with pytest.raises(OutputError) as caught, output_errors(out):
        inside.write_text("x")
    assert str(caught.value) == str(plain) and isinstance(caught.value.__cause__, NotADirectoryError)

    own = OutputError("already one line")
    with pytest.raises(OutputError) as caught, output_errors(out):
        raise own
    assert caught.value is own  # a TCLError is not wrapped again
    with pytest.raises(ValueError), output_errors(out):
        raise ValueError("not an OS error: a bug, left alone")
