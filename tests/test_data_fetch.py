"""`crackhpc data fetch`: archives from a local HTTP server or a file, unpacked and recognised."""

import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from crackhpc.cli import main
from crackhpc.data.fetch import find_root
from crackhpc.data.verify import EXPECTED_SIZE, verify
from crackhpc.errors import CrackhpcError

from .localhttp import served  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RAR_HEADER = b"Rar!\x1a\x07\x01\x00" + b"\x00" * 64


def zip_tree(src: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, prefix + path.relative_to(src).as_posix())
    return archive


def test_zip_from_a_url_is_unpacked_recognised_and_verified(served, tiny_data, tmp_path, capsys):
    www, base = served
    zip_tree(tiny_data, www / "concrete.zip")
    dest = tmp_path / "data"
    assert main(["data", "fetch", str(dest), "--url", f"{base}/concrete.zip"]) == 0
    out = capsys.readouterr().out
    assert f"{dest}: original layout" in out and "negative=20  positive=20  total=40" in out
    assert f"data: {{root: {dest}}}" in out
    assert sorted(p.name for p in dest.iterdir()) == ["Negative", "Positive"], "the downloaded archive is removed"


def test_local_tar_gz_with_a_wrapping_folder(tiny_data, tmp_path, capsys):
    archive = tmp_path / "crack.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tiny_data, arcname="Concrete Crack Images for Classification")
    dest = tmp_path / "data"
    assert main(["data", "fetch", str(dest), "--archive", str(archive)]) == 0
    root = dest / "Concrete Crack Images for Classification"
    assert f"{root}: original layout" in capsys.readouterr().out
    assert archive.is_file(), "a local archive is the user's: it stays"


def test_rar_is_a_clear_one_line_error(tmp_path, capsys):
    archive = tmp_path / "Concrete Crack Images for Classification.rar"
    archive.write_bytes(RAR_HEADER)
    assert main(["data", "fetch", str(tmp_path / "data"), "--archive", str(archive)]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert str(archive) in error and "unrar x" in error and "bsdtar -xf" in error
    assert f"crackhpc data verify {tmp_path / 'data'}" in error


def test_downloaded_rar_inside_a_zip_is_kept_and_named(served, tmp_path, capsys):
    """Mendeley's "Download all" zip holds the .rar: the error names the unpacked .rar to run unrar on."""
    www, base = served
    with zipfile.ZipFile(www / "5y9wdsg2zt-2.zip", "w") as zf:
        zf.writestr("Concrete Crack Images for Classification.rar", RAR_HEADER)
    dest = tmp_path / "data"
    assert main(["data", "fetch", str(dest), "--url", f"{base}/5y9wdsg2zt-2.zip"]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert f"unrar x '{dest / 'Concrete Crack Images for Classification.rar'}'" in error


def test_downloaded_rar_is_kept_for_unrar(served, tmp_path, capsys):
    www, base = served
    (www / "file_downloaded").write_bytes(RAR_HEADER)
    dest = tmp_path / "data"
    assert main(["data", "fetch", str(dest), "--url", f"{base}/file_downloaded"]) == 2
    assert f"unrar x '{dest / 'file_downloaded'}'" in capsys.readouterr().err
    assert (dest / "file_downloaded").read_bytes() == RAR_HEADER


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"<html>not found</html>", "not a .zip, .tar(.gz) or .rar archive"),
        (b"PK\x03\x04 a cut-off zip", "not a .zip, .tar(.gz) or .rar archive"),
    ],
)
def test_not_an_archive_is_one_line_and_the_download_is_removed(served, tmp_path, capsys, content, expected):
    www, base = served
    (www / "dataset.zip").write_bytes(content)
    dest = tmp_path / "data"
    assert main(["data", "fetch", str(dest), "--url", f"{base}/dataset.zip"]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert expected in error
    assert list(dest.iterdir()) == []


def test_archive_without_the_dataset_layout(tmp_path, capsys):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("photos/cat.jpg", b"x")
    assert main(["data", "fetch", str(tmp_path / "data"), "--archive", str(archive)]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert "no Positive/ and Negative/" in error and "5y9wdsg2zt" in error


def test_unreachable_url_and_missing_archive_are_one_line(served, tmp_path, capsys):
    _, base = served
    assert main(["data", "fetch", str(tmp_path / "d"), "--url", f"{base}/nothing.zip"]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert "HTTP 404" in error and "--archive FILE" in error
    assert main(["data", "fetch", str(tmp_path / "d"), "--archive", str(tmp_path / "none.zip")]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert "none.zip: no such archive file" in error


def test_zip_with_course_layout(tmp_path, tiny_data, capsys):
    course = tmp_path / "course"
    for split in ("train", "valid", "test"):
        for cls in ("positive", "negative"):
            shutil.copytree(tiny_data / cls.capitalize(), course / split / cls)
    archive = zip_tree(course, tmp_path / "course.zip", prefix="concrete/")
    assert main(["data", "fetch", str(tmp_path / "data"), "--archive", str(archive)]) == 0
    assert f"{tmp_path / 'data' / 'concrete'}: course layout" in capsys.readouterr().out


def _shared_root() -> Path | None:
    try:
        return find_root(SHARED_DATA) if SHARED_DATA.is_dir() else None
    except CrackhpcError:
        return None


@pytest.mark.skipif(
    _shared_root() is None,
    reason=f"no real crack images in {SHARED_DATA} "
    f"(put the unpacked dataset there, e.g. `crackhpc data fetch {SHARED_DATA}`)",
)
def test_real_dataset_in_shared_data_verifies():
    report = verify(_shared_root(), workers=2)
    assert report.ok, report.lines()
    assert report.sizes.most_common(1)[0][0] == EXPECTED_SIZE
    assert all(min(per_class.values()) > 0 for per_class in report.counts.values())
