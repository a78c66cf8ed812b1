"""The project's DVC cache links outputs instead of copying them (terabytes of shards must not exist twice).

A real ``dvc repro`` in a tiny repository that uses the project's ``.dvc/config``, with an output folder
shaped like a download@ stage's (``persist: true``): every file in it is the cache's own file afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import yaml

from .conftest import REPO, init_repo

STAGE = {"stages": {"download": {
    "cmd": "mkdir -p shards && python -c \"import sys; open('shards/0000.tar', 'w').write(sys.argv[1])\" ${n} "
           "&& echo more > shards/0001.tar",
    "params": ["n"], "outs": [{"shards": {"persist": True}}]}}}


def _repro(root) -> None:
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _linked_to_cache(root, path) -> bool:
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    cached = root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    return os.path.samefile(path, cached)  # the same inode (hard link) or a symlink to it


def test_output_folders_are_linked_into_the_cache_not_copied(tmp_path):
    root = init_repo(tmp_path / "repo")
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    (root / "params.yaml").write_text("n: 1\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump(STAGE, sort_keys=False))
    _repro(root)
    shards = sorted((root / "shards").iterdir())
    assert len(shards) == 2 and all(_linked_to_cache(root, p) for p in shards)
    (root / "params.yaml").write_text("n: 2\n")  # a persist output re-run (a resumed download) still works
    _repro(root)
    assert (root / "shards/0000.tar").read_text() == "2" and all(_linked_to_cache(root, p) for p in shards)
