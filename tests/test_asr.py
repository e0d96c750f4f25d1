"""Speech recognition: recognised words grouped into utterances (hand-made words), and the packaged
Whisper-base transcribing real speech (espeak-ng) from an mp4, offline."""

from __future__ import annotations

import re
import time

import pytest

from conftest import solid_frames, spoken_clip, tone
from emosent.segments import MAX_UTTERANCE_S, PAUSE_S, SegmentsError, Word, group_words, transcribe


def words(*spec: tuple[float, float, str]) -> list[Word]:
    return [Word(start, end, " " + text) for start, end, text in spec]


def texts(segments) -> list[str]:
    return [s.text for s in segments]


# --- grouping words into utterances --------------------------------------------------------------

def test_no_words_no_utterances():
    assert group_words([]) == []
    assert group_words(words((0.0, 0.2, ""), (0.2, 0.4, " "))) == []


def test_a_sentence_end_splits_and_times_come_from_the_words():
    segments = group_words(words((0.5, 0.8, "Hello"), (0.8, 1.2, "there."), (1.3, 1.6, "How"), (1.6, 1.7, "are"),
                                 (1.7, 2.0, "you?"), (2.0, 2.4, "Great!"), (2.4, 2.6, "Fine")))
    assert texts(segments) == ["Hello there.", "How are you?", "Great!", "Fine"]
    assert [(s.start, s.end) for s in segments] == [(0.5, 1.2), (1.3, 2.0), (2.0, 2.4), (2.4, 2.6)]
    assert {s.source for s in segments} == {"asr"}


def test_quotes_after_the_period_still_end_a_sentence_but_abbreviations_do_not():
    segments = group_words(words((0.0, 0.3, 'said "done."'), (0.3, 0.6, "Mr."), (0.6, 0.9, "Smith"), (0.9, 1.2, "left.")))
    assert texts(segments) == ['said "done."', "Mr. Smith left."]


def test_a_long_pause_splits_a_short_one_does_not():
    gap = PAUSE_S + 0.05
    segments = group_words(words((0.0, 0.4, "well"), (0.4 + PAUSE_S - 0.05, 1.5, "maybe"), (1.5 + gap, 2.5, "tomorrow")))
    assert texts(segments) == ["well maybe", "tomorrow"]
    assert segments[1].start == pytest.approx(1.5 + gap)


def test_an_utterance_never_grows_past_the_cap():
    n = 40  # 0.5 s words without a pause or a sentence end: 20 s of speech
    segments = group_words([Word(0.5 * i, 0.5 * (i + 1), f" w{i}") for i in range(n)])
    assert len(segments) == 3
    assert all(s.end - s.start <= MAX_UTTERANCE_S for s in segments)
    assert " ".join(texts(segments)).split() == [f"w{i}" for i in range(n)]  # nothing lost, nothing repeated
    # a single word longer than the cap stays whole
    assert texts(group_words(words((0.0, MAX_UTTERANCE_S + 1, "aaah")))) == ["aaah"]


# --- real speech, offline -------------------------------------------------------------------------

SENTENCES = ("Good morning everyone.", "I bought three apples at the market.", "Please close the door.")
KEY_WORDS = (("good", "morning", "everyone"), ("bought", "apples", "market"), ("please", "close", "door"))
LEAD_S, GAP_S, TAIL_S = 0.7, 1.2, 0.7  # silence before, between and after the sentences
# Whisper's alignment stretches the first word after a silence back into it (by 0.24-0.52 s here,
# measured); a word's end is within a few 20 ms frames.
EARLY_START_S, END_TOLERANCE_S = 0.6, 0.3


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """An mp4 (H.264 video + AAC audio) in which espeak-ng says SENTENCES with silence between them,
    the seconds each sentence is voiced, and what transcribe makes of it (timed: pytest -s shows it)."""
    clip, duration, spans = spoken_clip(tmp_path_factory.mktemp("speech"), SENTENCES, LEAD_S, GAP_S, TAIL_S)
    started = time.perf_counter()
    segments = transcribe(clip).segments  # the default: the packaged Whisper-base, offline (conftest sets HF_HUB_OFFLINE)
    seconds = time.perf_counter() - started
    print(f"transcribe: {duration:.1f} s of speech in {seconds:.1f} s")
    return {"clip": clip, "duration": duration, "spans": spans, "segments": segments}


def normalised(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def in_order(wanted, found: list[str]) -> bool:
    rest = iter(found)
    return all(word in rest for word in wanted)  # `in` on an iterator consumes it: a subsequence test


def test_whisper_base_recognises_each_sentence_offline(spoken):
    segments = spoken["segments"]
    assert [s.source for s in segments] == ["asr"] * len(SENTENCES), texts(segments)  # one utterance per sentence
    for segment, key_words in zip(segments, KEY_WORDS):
        assert in_order(key_words, normalised(segment.text)), (segment.text, key_words)


def test_recognised_times_fall_on_the_spoken_sentences(spoken):
    segments = spoken["segments"]
    assert len(segments) == len(SENTENCES), texts(segments)
    for segment, (voice_start, voice_end) in zip(segments, spoken["spans"]):
        assert 0 <= segment.start < segment.end <= spoken["duration"]
        assert voice_start - EARLY_START_S <= segment.start < voice_end, (segment, voice_start, voice_end)
        assert voice_end - END_TOLERANCE_S <= segment.end <= voice_end + END_TOLERANCE_S, (segment, voice_start, voice_end)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))  # in order, not overlapping


@pytest.fixture(scope="module")
def beep(tmp_path_factory):
    """A short mp4 with a sound, for failures that come before any speech is recognised."""
    from emosent.synthetic import write_clip

    return write_clip(tmp_path_factory.mktemp("beep") / "beep.mp4", duration_s=0.5, fps=10, width=160, height=120,
                      frame_fn=solid_frames(160, 120), audio_fn=tone())


def test_a_model_name_that_needs_the_hub_names_the_offline_choices(beep):
    # conftest sets HF_HUB_OFFLINE: a Hub id not in the local cache cannot be had
    with pytest.raises(SegmentsError, match=r"--asr-model emosent-tests/not-cached: could not load .*--asr-model base"):
        transcribe(beep, "emosent-tests/not-cached")


def test_an_unknown_model_name_is_refused_with_the_names_it_could_be(beep):
    with pytest.raises(SegmentsError, match=r"--asr-model smal: not a faster-whisper model; use one of .*small.*"
                                            r"--asr-model base"):
        transcribe(beep, "smal")


@pytest.mark.parametrize("kind", ["not media", "no audio", "missing"])
def test_a_file_without_audio_to_recognise_is_named(kind, tmp_path):
    from emosent.synthetic import write_clip

    path = tmp_path / "clip.mp4"
    if kind == "not media":
        path.write_text("not a video\n")
    elif kind == "no audio":
        write_clip(path, duration_s=0.5, fps=10, width=160, height=120, frame_fn=solid_frames(160, 120))
    reason = {"not media": "not a readable media file", "no audio": "no audio stream", "missing": "file not found"}[kind]
    with pytest.raises(SegmentsError, match=rf"clip\.mp4: {reason}"):
        transcribe(path)
