"""The per-speaker summary of an analysis (emosent.summary), on utterance records built by the real
`emosent.records.distributions` from chosen probabilities."""

from __future__ import annotations

import pytest
import torch

from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.records import distributions
from emosent.summary import movement, speaker_summary, spoken_s


def utterance(start: float, end: float, speaker: str | None, emotion: str, p_negative: float, p_positive: float) -> dict:
    """A record whose top emotion is `emotion` (0.6) and whose sentiment is (neg, neutral, pos)."""
    e = torch.full((len(EMOTIONS),), 0.4 / (len(EMOTIONS) - 1))
    e[EMOTIONS.index(emotion)] = 0.6
    s = torch.tensor([p_negative, 1 - p_negative - p_positive, p_positive])
    assert SENTIMENTS == ("negative", "neutral", "positive")
    return {"start_time": start, "end_time": end, "text": "...", "speaker": speaker, **distributions(e, s)}


def test_a_customer_grows_angry_while_the_agent_stays_calm():
    utterances = [utterance(0, 2, "agent", "neutral", 0.1, 0.6),
                  utterance(2, 4, "customer", "neutral", 0.2, 0.5),
                  utterance(4, 5, "agent", "neutral", 0.1, 0.6),
                  utterance(5, 8, "customer", "anger", 0.7, 0.1),
                  utterance(8, 9, "agent", "joy", 0.1, 0.7),
                  utterance(9, 12, "customer", "anger", 0.9, 0.05)]
    agent, customer = speaker_summary(utterances)
    assert (agent["speaker"], customer["speaker"]) == ("agent", "customer")  # order of first appearance
    assert (agent["utterances"], agent["spoken_s"], customer["spoken_s"]) == (3, 4.0, 8.0)
    assert agent["spoken_share"] == pytest.approx(4 / 12, abs=1e-3) and customer["spoken_share"] == pytest.approx(8 / 12, abs=1e-3)
    assert customer["emotions"] == {**dict.fromkeys(EMOTIONS, 0.0), "neutral": 0.333, "anger": 0.667}
    assert list(customer["sentiments"]) == list(SENTIMENTS) and customer["sentiments"]["negative"] == 0.667
    assert agent["sentiments"] == {"negative": 0.0, "neutral": 0.0, "positive": 1.0}
    # the customer's score went from 0.5 - 0.2 to 0.05 - 0.9 (one utterance per third of three)
    assert customer["sentiment_movement"] == {"first_third": 0.3, "last_third": -0.85, "change": -1.15, "trend": "fell",
                                              "utterances_per_third": 1}
    assert agent["sentiment_movement"]["trend"] == "steady" and agent["sentiment_movement"]["change"] == pytest.approx(0.1)
    assert customer["sentiment_score"] == pytest.approx((0.3 - 0.6 - 0.85) / 3, abs=1e-3)


def test_unknown_speakers_and_a_video_without_any():
    named = [utterance(0, 1, None, "joy", 0.1, 0.8), utterance(1, 2, "S1", "sadness", 0.8, 0.1)]
    assert [(s["speaker"], s["utterances"]) for s in speaker_summary(named)] == [(None, 1), ("S1", 1)]
    (everyone,) = speaker_summary([utterance(0, 1, None, "joy", 0.1, 0.8), utterance(1, 3, None, "sadness", 0.8, 0.1)])
    assert everyone["speaker"] is None and everyone["utterances"] == 2 and everyone["spoken_share"] == 1.0
    assert everyone["emotions"]["joy"] == everyone["emotions"]["sadness"] == 0.5
    assert everyone["sentiment_movement"]["trend"] == "fell"
    (alone,) = speaker_summary([utterance(0, 1, "S1", "joy", 0.1, 0.8)])
    assert alone["sentiment_movement"] is None  # one utterance has no movement to tell


def test_overlapping_speech_is_counted_once_and_thirds_round_up():
    assert spoken_s([(0, 2), (1, 3), (5, 6), (5.5, 5.8)]) == pytest.approx(4.0)
    assert spoken_s([]) == 0
    # 4 utterances: thirds of 2 (rounded up), overlapping in the middle
    assert movement([0.0, 0.2, 0.6, 1.0]) == {"first_third": 0.1, "last_third": 0.8, "change": 0.7, "trend": "rose",
                                              "utterances_per_third": 2}
    assert movement([0.5]) is None
