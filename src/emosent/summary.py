"""Per-speaker summary of an analysis: who spoke how much, with which emotions and sentiments,
and how their sentiment moved, read from the utterances' records (`emosent.records`).

The movement is the sentiment score, P(positive) - P(negative) of an utterance (-1 wholly
negative, +1 wholly positive), averaged over the first third of the speaker's utterances and over
the last third, in time order: "started at -0.4, ended at +0.3" reads at a glance, where a
regression slope would need its units explained. With fewer than 2 utterances there is no
movement to tell (null).
"""

from __future__ import annotations

import math

from emosent.labels import EMOTIONS, SENTIMENTS

SHARE_DECIMALS = 3
SCORE_DECIMALS = 3
# |last third - first third| below this is called "steady": a tenth of the score's range (-1..1).
# A reading aid only; `change` gives the number itself.
TREND_MIN_CHANGE = 0.2


def sentiment_score(utterance: dict) -> float:
    """P(positive) - P(negative) of one utterance's record, in [-1, 1]."""
    probs = utterance["sentiment_probs"]
    return probs["positive"] - probs["negative"]


def spoken_s(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the (start, end) spans, overlaps counted once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def shares(labels: list[str], names: tuple[str, ...]) -> dict[str, float]:
    """The share of `labels` equal to each of `names`, in `names`' order (0 included)."""
    return {name: round(labels.count(name) / len(labels), SHARE_DECIMALS) for name in names}


def movement(scores: list[float]) -> dict | None:
    """The mean sentiment score of the first and of the last third (at least one utterance each,
    rounded up) of `scores` (in time order), their difference and its word; None for < 2 scores."""
    if len(scores) < 2:
        return None
    k = math.ceil(len(scores) / 3)
    first, last = sum(scores[:k]) / k, sum(scores[-k:]) / k
    change = last - first
    trend = "rose" if change >= TREND_MIN_CHANGE else "fell" if change <= -TREND_MIN_CHANGE else "steady"
    return {"first_third": round(first, SCORE_DECIMALS), "last_third": round(last, SCORE_DECIMALS),
            "change": round(change, SCORE_DECIMALS), "trend": trend, "utterances_per_third": k}


def speaker_summary(utterances: list[dict]) -> list[dict]:
    """One entry per speaker, in order of first appearance (`speaker` null for the utterances whose
    speaker is unknown; then, with no speaker known at all, one entry for the whole video):
    utterances, seconds spoken (overlaps once) and their share of all speech, the share of their
    utterances with each top emotion and sentiment, their mean sentiment score and its movement."""
    groups: dict[str | None, list[dict]] = {}
    for u in sorted(utterances, key=lambda u: (u["start_time"], u["end_time"])):
        groups.setdefault(u.get("speaker"), []).append(u)
    everyone = spoken_s([(u["start_time"], u["end_time"]) for u in utterances]) or 1.0
    out = []
    for speaker, mine in groups.items():
        seconds = spoken_s([(u["start_time"], u["end_time"]) for u in mine])
        scores = [sentiment_score(u) for u in mine]
        out.append({"speaker": speaker, "utterances": len(mine), "spoken_s": round(seconds, 3),
                    "spoken_share": round(seconds / everyone, SHARE_DECIMALS),
                    "emotions": shares([u["emotion"] for u in mine], EMOTIONS),
                    "sentiments": shares([u["sentiment"] for u in mine], SENTIMENTS),
                    "sentiment_score": round(sum(scores) / len(scores), SCORE_DECIMALS),
                    "sentiment_movement": movement(scores)})
    return out
