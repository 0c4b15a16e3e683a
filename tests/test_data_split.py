import pytest

from crackhpc.config import STUDY_SPLIT
from crackhpc.data.layout import Item
from crackhpc.data.split import counts, make_manifest, manifest_hash, read_manifest, split_items, write_manifest
from crackhpc.errors import DataError


def _study_items():
    return [
        Item(f"{cls}/{i:05d}.jpg", label, None)
        for label, cls in enumerate(("Negative", "Positive"))
        for i in range(1, 20001)
    ]


def test_study_split_counts_are_stratified():
    table = counts(split_items(_study_items(), STUDY_SPLIT, seed=0))
    assert {s: sum(c.values()) for s, c in table.items()} == {"train": 30000, "valid": 9500, "test": 500}
    assert all(c["negative"] == c["positive"] for c in table.values())


def test_split_is_deterministic_and_seeded():
    items = _study_items()[:1000] + _study_items()[-1000:]  # both classes: one alone is refused
    a, b = split_items(items, STUDY_SPLIT, 0), split_items(list(reversed(items)), STUDY_SPLIT, 0)
    assert a == b
    assert manifest_hash(a) != manifest_hash(split_items(items, STUDY_SPLIT, 1))


def test_course_layout_split_is_kept():
    items = [Item("train/positive/a.jpg", 1, "train"), Item("test/negative/b.jpg", 0, "test")]
    assert split_items(items, STUDY_SPLIT, 0) == items


def test_too_few_images_is_a_clear_error():
    with pytest.raises(DataError, match="too few for split"):
        split_items(_study_items()[:2] + _study_items()[-2:], STUDY_SPLIT, 0)


def test_manifest_round_trip(tiny_data, tmp_path):
    items = make_manifest(tiny_data, (0.5, 0.25, 0.25), 3)
    path = write_manifest(tmp_path / "split.csv", items)
    assert read_manifest(path) == items
    assert path.read_text().splitlines()[0] == "path,label,split"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a split manifest"):
        read_manifest(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "not a split manifest (binary or not UTF-8 text)"),
        (b"file,label\nx.jpg,1\n", "not a split manifest (columns must be path, label, split)"),
        (b"path,label,split\nNegative/a.jpg,0,train\nNegative/b.jpg,zero,test\n", "line 3: not `path,label,split`"),
        (b"path,label,split\nNegative/a.jpg,0,train\nNegative/b.jp", "line 3: not `path,label,split`"),  # truncated
        (b'path,label,split\n"Negative/a.jpg,0,train\n', "not `path,label,split`"),  # open quote
        (b"", "not a split manifest (columns must be"),
    ],
)
def test_damaged_manifest_is_one_data_error(tmp_path, content, problem):
    path = tmp_path / "split.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert "crackhpc sweep <sweep file> --retry-failed" in message
