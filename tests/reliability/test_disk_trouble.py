"""Disk trouble: a data directory that cannot be written or is corrupt gives a clear error at
start (exit code 2, the directory named) and leaves every file as it was (checksums).

Tests run as root here, for whom permission bits do not bite; "not writable" is therefore a
regular file where the directory is expected, and a directory made immutable with
``chattr +i`` where the filesystem supports it (else that case is skipped, saying why)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import free_port, run_cli
from tests.harness.profile import preload, write_config

pytestmark = pytest.mark.integration


def checksums(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def serve(config: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "serve", "--config", str(config), "--data-dir", str(data_dir),
        "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--no-auth",
    )  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("disk")
    config = write_config(tmp, n_features=10)
    preload(config, tmp / "db", 20_000, 1, 10)
    return config, tmp / "db"


def _data_files(d: Path) -> dict[str, str]:
    """Checksums of what RocksDB's data is made of (its LOG is rotated by any open attempt)."""
    return {k: v for k, v in checksums(d).items() if not k.startswith("LOG")}


def corrupt(kind: str, d: Path) -> None:
    if kind == "current-empty":
        (d / "CURRENT").write_bytes(b"")
    elif kind == "current-garbled":
        (d / "CURRENT").write_bytes(b"MANIFEST-999999\n")
    elif kind == "manifest-garbled":
        m = next(d.glob("MANIFEST-*"))
        b = bytearray(m.read_bytes())
        for i in range(0, len(b), 7):
            b[i] ^= 0x5A
        m.write_bytes(bytes(b))
    elif kind == "manifest-truncated":
        m = next(d.glob("MANIFEST-*"))
        m.write_bytes(m.read_bytes()[:20])
    elif kind == "sst-truncated":
        s = max(d.glob("*.sst"), key=lambda p: p.stat().st_size)
        s.write_bytes(s.read_bytes()[: s.stat().st_size // 2])
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["current-empty", "current-garbled", "manifest-garbled", "manifest-truncated", "sst-truncated"],
)
def test_corrupt_store_fails_clearly_and_destroys_nothing(
    good: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    config, db = good
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    if not list(copy.glob("*.sst")):
        pytest.fail("the fixture store has no SST file")
    corrupt(kind, copy)
    before = _data_files(copy)
    out = serve(config, copy)
    print(f"\n{kind}: exit {out.returncode}: {out.stderr.strip().splitlines()[-1][:300]}")
    assert out.returncode == 2, out.stderr
    assert str(copy) in out.stderr
    assert "Traceback" not in out.stderr
    assert _data_files(copy) == before


def test_file_where_the_directory_should_be(good: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = good
    not_a_dir = tmp_path / "store"
    not_a_dir.write_bytes(b"precious")
    out = serve(config, not_a_dir)
    print(f"\nfile as data dir: exit {out.returncode}: {out.stderr.strip().splitlines()[-1][:300]}")
    assert out.returncode == 2, out.stderr
    assert str(not_a_dir) in out.stderr
    assert not_a_dir.read_bytes() == b"precious"


def test_immutable_directory(good: tuple[Path, Path], tmp_path: Path) -> None:
    config, db = good
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    if subprocess.run(["chattr", "+i", str(copy)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +i is not supported on this filesystem (root ignores mode bits)")
    try:
        before = checksums(copy)
        out = serve(config, copy)
        print(
            f"\nimmutable dir: exit {out.returncode}: {out.stderr.strip().splitlines()[-1][:300]}"
        )
        assert out.returncode == 2, out.stderr
        assert str(copy) in out.stderr
        assert checksums(copy) == before
    finally:
        subprocess.run(["chattr", "-i", str(copy)], check=False)
