"""The workers take the longest test files first, each file's tests in their own order."""

from __future__ import annotations

import json
import types

import conftest


def _item(path: str, name: str):
  return types.SimpleNamespace(location=(path, 0, name), name=name)


def test_files_are_ordered_by_recorded_seconds_and_keep_their_tests_order(tmp_path,
                                                                         monkeypatch):
  table = tmp_path / "file_seconds.json"
  table.write_text(json.dumps({"tests/a.py": 1.0, "tests/b.py": 30.0, "tests/c.py": 5.0,
                               "tests/d.py": 2.0}))
  monkeypatch.setattr(conftest, "FILE_SECONDS", table)
  # tests/new.py is not in the table: it counts as the median (3.5 s).
  items = [_item(path, f"{path}::{n}") for path in
           ("tests/a.py", "tests/new.py", "tests/b.py", "tests/c.py", "tests/d.py")
           for n in ("first", "second")]
  conftest.pytest_collection_modifyitems(None, items)
  assert [item.name for item in items] == [
      f"{path}::{n}" for path in ("tests/b.py", "tests/c.py", "tests/new.py", "tests/d.py",
                                  "tests/a.py") for n in ("first", "second")]


def test_every_recorded_file_exists():
  """A renamed or deleted file's entry would only mislead the order: the table is refreshed
  with `bash benchmarks/suite_time.sh --record`."""
  recorded = json.loads(conftest.FILE_SECONDS.read_text())
  missing = [path for path in recorded if not (conftest.REPO / path).is_file()]
  assert not missing, missing
