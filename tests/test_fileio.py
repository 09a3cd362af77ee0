"""write_bytes_atomically: concurrent writers of one cache entry must all succeed."""

import threading

import pytest

from rin_diffusion import fileio


def test_replaces_an_existing_file(tmp_path):
  # Two runs that compute the same reference statistics: the second must not fail because the
  # first already wrote the file (it did, with epath's rename).
  path = tmp_path / "stats.npz"
  fileio.write_bytes_atomically(path, b"first")
  fileio.write_bytes_atomically(path, b"second")
  assert path.read_bytes() == b"second"
  assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]


def test_concurrent_writers_all_succeed_and_leave_one_whole_file(tmp_path):
  path = tmp_path / "stats.npz"
  payloads = [bytes([i]) * 200_000 for i in range(8)]
  errors = []

  def write(data):
    try:
      fileio.write_bytes_atomically(path, data)
    except Exception as e:  # noqa: BLE001 - any failure of a writer fails the test below.
      errors.append(e)

  threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == []
  assert path.read_bytes() in payloads
  assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]


def test_creates_the_folder(tmp_path):
  path = tmp_path / "cache" / "nested" / "stats.npz"
  fileio.write_bytes_atomically(path, b"data")
  assert path.read_bytes() == b"data"


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "stats.npz"
  fileio.write_bytes_atomically(path, b"good")
  with pytest.raises(TypeError):
    fileio.write_bytes_atomically(path, "not bytes")
  assert path.read_bytes() == b"good"
  assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]
