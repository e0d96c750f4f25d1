"""The --plot timeline, read back from the PNG it writes: one lane per speaker, each utterance's
bands in its speaker's lane, one lane when no speaker is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.plots import EMOTION_COLOURS, LANE_IN, LEGEND_IN, SENTIMENT_COLOURS, TITLE_IN, timeline_png
from emosent.records import distributions

DPI = 120


def utterance(start: float, end: float, speaker: str | None, emotion: str, sentiment: str) -> dict:
    """A record sure of its labels (confidence 1: the bands are drawn opaque, in the legend's colour)."""
    e, s = torch.zeros(len(EMOTIONS)), torch.zeros(len(SENTIMENTS))
    e[EMOTIONS.index(emotion)], s[SENTIMENTS.index(sentiment)] = 1.0, 1.0
    return {"start_time": start, "end_time": end, "text": "...", "speaker": speaker, **distributions(e, s)}


def band(image: np.ndarray, colour: str) -> tuple[range, range]:
    """The rows and columns of the band drawn in `colour`: rows where that colour fills more than a
    tenth of the width (the legend's small swatches do not), and the columns it fills there."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    hit = (np.abs(image[..., :3] - rgb) < 2 / 255).all(-1)
    rows = np.flatnonzero(hit.sum(1) > image.shape[1] / 10)
    assert rows.size, f"no band in {colour}"
    cols = np.flatnonzero(hit[rows].any(0))
    return range(rows.min(), rows.max() + 1), range(cols.min(), cols.max() + 1)


@pytest.fixture
def talk():
    return [utterance(0, 1, "Ann", "anger", "negative"), utterance(1, 2, "Bob", "joy", "positive"),
            utterance(2, 3, "Cy", "sadness", "neutral"), utterance(3, 4, "Ann", "fear", "negative")]


def test_one_lane_per_speaker_in_order_of_first_appearance(talk, tmp_path):
    path = timeline_png({"video": "talk.mp4", "duration_s": 4.0, "utterances": talk}, tmp_path / "lanes.png")
    image = imread(path)
    assert image.shape[0] == round(DPI * (LEGEND_IN + TITLE_IN + 3 * LANE_IN))  # three lanes high
    anger, joy, sadness, fear = (band(image, EMOTION_COLOURS[e]) for e in ("anger", "joy", "sadness", "fear"))
    negative, positive = band(image, SENTIMENT_COLOURS["negative"]), band(image, SENTIMENT_COLOURS["positive"])
    # Ann's lane on top, then Bob's, then Cy's; her two utterances share her lane
    assert anger[0].stop <= joy[0].start and joy[0].stop <= sadness[0].start
    assert fear[0] == anger[0] and fear[1].start > sadness[1].start
    # each lane: the emotion row above the sentiment row, both over the utterance's time
    assert anger[0].stop <= negative[0].start < joy[0].start and joy[0].stop <= positive[0].start < sadness[0].start
    assert anger[1].start < joy[1].start < sadness[1].start and positive[1] == joy[1]


def test_one_lane_when_no_speaker_is_known(talk, tmp_path):
    nobody = [dict(u, speaker=None) for u in talk]
    image = imread(timeline_png({"video": "talk.mp4", "duration_s": 4.0, "utterances": nobody}, tmp_path / "one.png"))
    assert image.shape[0] == round(DPI * (LEGEND_IN + TITLE_IN + LANE_IN))
    rows = {e: band(image, EMOTION_COLOURS[e])[0] for e in ("anger", "joy", "sadness", "fear")}
    assert len(set(rows.values())) == 1  # every utterance in the same row
