"""UtteranceDataset + Collator: any subset of modalities, tokenisation, counted skips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from emosent.data import Collator, SkipCounter, Utterance, UtteranceDataset
from emosent.encoders import load_text_encoder


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_encoder("tiny")[1]


def utt(text="I am so happy", path=None, emotion="joy", sentiment="positive", **kw) -> Utterance:
    return Utterance(text=text, emotion=emotion, sentiment=sentiment, path=path, source="test.csv:2", **kw)


def test_text_only_needs_no_media_files(tokenizer):
    data = UtteranceDataset([utt(path=Path("/nonexistent.mp4")), utt("so sad", emotion="sadness", sentiment="negative")], ("text",))
    batch = Collator(tokenizer)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["emotion"].tolist() == [3, 5] and batch["sentiment"].tolist() == [2, 0]
    assert "video" not in batch and "audio" not in batch and batch["skipped"] == []


def test_padding_to_longest_and_truncation_at_128_tokens(tokenizer):
    long_text = "word " * 1000  # a 5,000-character utterance
    assert len(long_text) == 5000
    data = UtteranceDataset([utt("hi"), utt("hello there my friend")], ("text",))
    batch = Collator(tokenizer)([data[0], data[1]])
    assert batch["input_ids"].shape[1] == 6  # [CLS] hello there my friend [SEP]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    batch = Collator(tokenizer)([UtteranceDataset([utt(long_text)], ("text",))[0]])
    assert batch["input_ids"].shape == (1, 128)


def test_empty_utterance_is_a_counted_skip(tokenizer, clips):
    data = UtteranceDataset([utt(""), utt("fine")], ("text",))
    batch = Collator(tokenizer)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 1 and batch["skipped"][0][:2] == (0, "empty text")
    assert "test.csv:2" in batch["skipped"][0][2]
    # without the text modality an empty utterance is fine
    item = UtteranceDataset([utt("", path=clips["normal"])], ("audio",))[0]
    assert "skip" not in item and item["audio"].shape == (1, 64, 300)


def test_media_modalities_and_bad_clips_through_a_dataloader(clips, tokenizer):
    records = [utt(path=clips["normal"]), utt(path=clips["truncated"]), utt(path=clips["missing"]),
               utt(path=clips["no_audio"]), utt(path=clips["no_video"]), utt(path=None)]
    data = UtteranceDataset(records, ("text", "video", "audio"))
    counter = SkipCounter()
    loader = DataLoader(data, batch_size=3, collate_fn=Collator(tokenizer), num_workers=2)
    shapes = []
    for batch in loader:
        counter.update(batch)
        shapes.append(tuple(batch["video"].shape) if "video" in batch else None)
    assert shapes == [(1, 16, 3, 112, 112), (1, 16, 3, 112, 112)]
    assert counter.seen == 6 and counter.skipped == 4
    assert counter.reasons == {"not a readable media file": 1, "file not found": 1, "no video stream": 1, "no media path": 1}
    line = counter.summary()
    assert line.startswith("skipped 4 of 6 clips: ") and "\n" not in line and "truncated.mp4" in line


def test_a_batch_where_every_item_failed_does_not_crash(clips, tokenizer):
    data = UtteranceDataset([utt(path=clips["text"]), utt(path=clips["missing"])], ("audio",))
    batch = Collator(tokenizer)([data[0], data[1]])
    assert batch["index"].numel() == 0 and len(batch["skipped"]) == 2 and "audio" not in batch


def test_audio_only_accepts_audio_files(clips, tokenizer):
    data = UtteranceDataset([utt(path=clips["no_video"]), utt(path=clips["normal"])], ("audio",))
    batch = Collator(tokenizer)([data[0], data[1]])
    assert batch["audio"].shape == (2, 1, 64, 300) and "video" not in batch and "input_ids" not in batch


def test_time_ranges_are_passed_to_the_clip_reader(clips):
    whole = UtteranceDataset([utt(path=clips["normal"])], ("video",))[0]["video"]
    window = UtteranceDataset([utt(path=clips["normal"], start=1.0, end=1.5)], ("video",))[0]["video"]
    assert not torch.allclose(whole, window)


def test_modalities_must_not_be_empty():
    with pytest.raises(ValueError, match="non-empty"):
        UtteranceDataset([], ())
