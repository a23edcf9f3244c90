"""segbench.io: result files get the mode the umask says; temporary folders of killed
processes are removed by the next one."""

import os
import subprocess
import sys

import pytest

from segbench.io import owned_tempdir, write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"mIoU": 0.5})
        write_json(tmp_path / "metrics.json", {"mIoU": 0.6})  # replacing keeps to the umask too
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "metrics.json").st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_owned_tempdir_removes_only_dead_owners_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    dead = _dead_pid()
    orphan = tmp_path / f"segbench-serve-{dead}-abc123"
    (orphan / "sub").mkdir(parents=True)
    (orphan / "sub" / "upload.png").write_bytes(b"x" * 10)
    alive = tmp_path / f"segbench-serve-{os.getppid()}-def456"  # the parent (pytest's runner) lives
    alive.mkdir()
    other_kind = tmp_path / f"segbench-track-{dead}-ghi789"  # another prefix: not this caller's
    other_kind.mkdir()
    not_ours = tmp_path / f"segbench-serve-{dead}-nobody"  # another user's folder (only root can make one)
    not_ours.mkdir()
    if os.getuid() == 0:
        os.chown(not_ours, 65534, 65534)
    else:
        not_ours.rmdir()
    not_a_pid = tmp_path / "segbench-serve-report"
    not_a_pid.mkdir()

    made = owned_tempdir("segbench-serve-")

    assert made.parent == tmp_path and made.name.startswith(f"segbench-serve-{os.getpid()}-") and made.is_dir()
    assert not orphan.exists()
    assert alive.is_dir() and other_kind.is_dir() and not_a_pid.is_dir()
    assert not_ours.is_dir() or os.getuid() != 0
    err = capsys.readouterr().err
    assert f"removed {orphan}" in err and f"process {dead} which is gone" in err
