"""mergejax.files: atomic writes leave the old file or the new one, never a partial one."""

import json
import os

import numpy as np
import pytest

from mergejax import files


def test_atomic_write_json_round_trips_numpy_values_and_leaves_no_temp(tmp_path):
  path = tmp_path / "sub" / "row.json"
  files.atomic_write_json(path, {"b": np.float32(0.5), "a": np.arange(3)})
  assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": 0.5}
  assert path.read_text().index('"a"') < path.read_text().index('"b"')  # sorted keys
  assert os.listdir(path.parent) == ["row.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
  path = tmp_path / "x.json"
  files.atomic_write_json(path, {"v": 1})
  with pytest.raises(TypeError):
    files.atomic_write(path, 12345)  # not str or bytes: fails inside the write
  assert json.loads(path.read_text()) == {"v": 1}
  assert os.listdir(tmp_path) == ["x.json"]


def test_written_files_get_the_permissions_open_gives(tmp_path):
  files.atomic_write(tmp_path / "atomic.txt", "x")
  (tmp_path / "plain.txt").write_text("x")
  mode = lambda name: (tmp_path / name).stat().st_mode & 0o777
  assert mode("atomic.txt") == mode("plain.txt")
