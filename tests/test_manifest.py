"""read_manifest: MELD's layout, users' CSVs, text repair, and clear errors."""

from __future__ import annotations

import csv
import unicodedata

import pytest

from conftest import shared_data
from emosent.data import ManifestError, read_manifest
from emosent.labels import EMOTIONS

USER_HEADER = "path,text,emotion,sentiment,start,end\n"


def has_c1(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" and 0x80 <= ord(c) <= 0x9F for c in text)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_pre2020_meld_is_repaired(split):
    old = read_manifest(shared_data("meld", "pre2020"), split)
    new = read_manifest(shared_data("meld"), split)
    assert len(old) == len(new) > 1000
    assert not any(has_c1(u.text) for u in old)
    with open(shared_data("meld", "pre2020", f"{split}_sent_emo.csv"), encoding="utf-8") as f:
        assert any(has_c1(row["Utterance"]) for row in csv.DictReader(f))  # the raw file does have them
    same = sum(a.text == b.text for a, b in zip(old, new)) / len(new)
    assert same >= 0.99


def test_meld_records_point_at_the_meld_raw_clips():
    folder = shared_data("meld")
    train = read_manifest(folder, "train")
    assert len(train) == 9989
    first = train[0]
    assert first.path == folder / "train_splits" / "dia0_utt0.mp4"
    assert first.emotion == "neutral" and first.sentiment == "neutral" and first.start is None
    assert first.source.endswith("train_sent_emo.csv:2")
    counts = {e: sum(u.emotion == e for u in train) for e in EMOTIONS}
    assert counts == {"neutral": 4710, "joy": 1743, "surprise": 1205, "anger": 1109, "sadness": 683, "disgust": 271, "fear": 268}
    assert read_manifest(folder, "dev")[0].path.parent.name == "dev_splits_complete"


def test_users_csv_with_relative_paths_and_case_insensitive_labels(tmp_path):
    (tmp_path / "train.csv").write_text(USER_HEADER + "clips/a.mp4,Hello there,JOY,Positive,1.5,3\nb.wav,hm,neutral,neutral,,\n")
    records = read_manifest(tmp_path, "train")
    assert [r.emotion for r in records] == ["joy", "neutral"]
    assert records[0].path == tmp_path / "clips" / "a.mp4" and (records[0].start, records[0].end) == (1.5, 3.0)
    assert records[1].start is None and records[1].sentiment == "neutral"


def test_single_csv_with_split_column(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text("path,text,emotion,sentiment,split\na.mp4,x,joy,positive,train\nb.mp4,y,anger,negative,dev\n")
    assert [r.text for r in read_manifest(path, "dev")] == ["y"]
    assert len(read_manifest(path, None)) == 2
    no_split = tmp_path / "nosplit.csv"
    no_split.write_text("path,text,emotion,sentiment\na.mp4,x,joy,positive\n")
    with pytest.raises(ManifestError, match="no 'split' column"):
        read_manifest(no_split, "train")


def test_unknown_label_names_file_rows_and_allowed_values(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(USER_HEADER + "a.mp4,x,joy,positive,,\nb.mp4,y,happy,positive,,\nc.mp4,z,angry,negative,,\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path, None)
    message = str(err.value)
    assert str(path) in message and "line 3: 'happy'" in message and "line 4: 'angry'" in message
    assert "anger, disgust, fear, joy, neutral, sadness, surprise" in message


def test_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("path,text,emotion\na.mp4,x,joy\n")
    with pytest.raises(ManifestError, match=r"bad.csv: missing column\(s\) sentiment"):
        read_manifest(path, None)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\x89PNG\r\n\x1a\n\x00\x00binary", b'{"not": "a csv"}'])
def test_empty_or_non_csv_file(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=r"data.csv: (the file is empty|missing column)"):
        read_manifest(path, None)


def test_missing_split_and_folder(tmp_path):
    with pytest.raises(ManifestError, match="no test_sent_emo.csv .* or test.csv"):
        read_manifest(tmp_path, "test")
    with pytest.raises(ManifestError, match="no such file or folder"):
        read_manifest(tmp_path / "nope.csv", None)
    with pytest.raises(ValueError, match="split must be one of"):
        read_manifest(tmp_path, "validation")


def test_ravdess_as_users_own_data(tmp_path):
    """The real RAVDESS FLACs through a users'-own-data CSV, read by PyAV."""
    from emosent.data import load_clip

    root = shared_data("ravdess16k")
    with open(root / "labels.csv") as f:
        rows = [r for r in csv.DictReader(f)][:3]
    path = tmp_path / "ravdess.csv"
    path.write_text("path,text,emotion,sentiment\n" + "".join(
        f"{root / r['path']},{r['statement']},{r['emotion']},neutral\n" for r in rows))
    records = read_manifest(path, None)
    clip = load_clip(records[0].path, modalities=("audio",))
    assert clip.has_audio and clip.audio.shape == (1, 64, 300)
