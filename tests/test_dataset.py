"""UtteranceDataset + Processor: any subset of modalities, tokenisation, counted skips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from emosent.config import MODALITIES, ProcessorConfig
from emosent.data import SkipCounter, Utterance, UtteranceDataset
from emosent.encoders import load_text_encoder
from emosent.processor import Processor


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_encoder("tiny")[1]


def processor(modalities, tokenizer=None, **settings) -> Processor:
    return Processor(ProcessorConfig(**settings), modalities, tokenizer or load_text_encoder("tiny")[1])


def utt(text="I am so happy", path=None, emotion="joy", sentiment="positive", **kw) -> Utterance:
    return Utterance(text=text, emotion=emotion, sentiment=sentiment, path=path, source="test.csv:2", **kw)


def test_text_only_needs_no_media_files(tokenizer):
    data = UtteranceDataset([utt(path=Path("/nonexistent.mp4")), utt("so sad", emotion="sadness", sentiment="negative")], processor(("text",)))
    batch = processor(MODALITIES, tokenizer).collate([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["emotion"].tolist() == [3, 5] and batch["sentiment"].tolist() == [2, 0]
    assert "video" not in batch and "audio" not in batch and batch["skipped"] == []


def test_padding_to_longest_and_truncation_at_128_tokens(tokenizer):
    long_text = "word " * 1000  # a 5,000-character utterance
    assert len(long_text) == 5000
    data = UtteranceDataset([utt("hi"), utt("hello there my friend")], processor(("text",)))
    batch = processor(MODALITIES, tokenizer).collate([data[0], data[1]])
    assert batch["input_ids"].shape[1] == 6  # [CLS] hello there my friend [SEP]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    batch = processor(MODALITIES, tokenizer).collate([UtteranceDataset([utt(long_text)], processor(("text",)))[0]])
    assert batch["input_ids"].shape == (1, 128)


def test_empty_utterance_is_a_counted_skip(tokenizer, clips):
    data = UtteranceDataset([utt(""), utt("fine")], processor(("text",)))
    batch = processor(MODALITIES, tokenizer).collate([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 1 and batch["skipped"][0][:2] == (0, "empty text")
    assert "test.csv:2" in batch["skipped"][0][2]
    # without the text modality an empty utterance is fine
    item = UtteranceDataset([utt("", path=clips["normal"])], processor(("audio",)))[0]
    assert "skip" not in item and item["audio"].shape == (1, 64, 300)


def test_media_modalities_and_bad_clips_through_a_dataloader(clips, tokenizer):
    records = [utt(path=clips["normal"]), utt(path=clips["truncated"]), utt(path=clips["missing"]),
               utt(path=clips["no_audio"]), utt(path=clips["no_video"]), utt(path=None)]
    data = UtteranceDataset(records, processor(("text", "video", "audio")))
    counter = SkipCounter()
    loader = DataLoader(data, batch_size=3, collate_fn=processor(MODALITIES, tokenizer).collate, num_workers=2)
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
    data = UtteranceDataset([utt(path=clips["text"]), utt(path=clips["missing"])], processor(("audio",)))
    batch = processor(MODALITIES, tokenizer).collate([data[0], data[1]])
    assert batch["index"].numel() == 0 and len(batch["skipped"]) == 2 and "audio" not in batch


def test_audio_only_accepts_audio_files(clips, tokenizer):
    data = UtteranceDataset([utt(path=clips["no_video"]), utt(path=clips["normal"])], processor(("audio",)))
    batch = processor(MODALITIES, tokenizer).collate([data[0], data[1]])
    assert batch["audio"].shape == (2, 1, 64, 300) and "video" not in batch and "input_ids" not in batch


def test_time_ranges_are_passed_to_the_clip_reader(clips):
    whole = UtteranceDataset([utt(path=clips["normal"])], processor(("video",)))[0]["video"]
    window = UtteranceDataset([utt(path=clips["normal"], start=1.0, end=1.5)], processor(("video",)))[0]["video"]
    assert not torch.allclose(whole, window)


def test_modalities_must_not_be_empty():
    with pytest.raises(ValueError, match="non-empty"):
        Processor(ProcessorConfig(), ())


def test_every_setting_reaches_the_inputs(clips):
    """The processor's settings, not constants anywhere, shape what a clip becomes."""
    default = processor(("video", "audio"))(utt(path=clips["normal"]))
    other = processor(("video", "audio"), num_frames=8, frame_size=64, n_mels=80, audio_window_s=4.8, hop_length=256)(
        utt(path=clips["normal"]))
    assert default["video"].shape == (16, 3, 112, 112) and default["audio"].shape == (1, 64, 300)
    assert other["video"].shape == (8, 3, 64, 64) and other["audio"].shape == (1, 80, 300)  # 4.8 s at 256-sample hops
    tokens = processor(("text",), max_tokens=5).collate([processor(("text",))(utt("one two three four five six seven"))])
    assert tokens["input_ids"].shape == (1, 5)
