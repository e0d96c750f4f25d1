"""What an utterance's result is: one record from one row of a model's output, written alike by
`analyze` (its JSON's utterances), `predict` (its rows) and `evaluate` (predictions.jsonl).

A record holds the top emotion and sentiment (`emotion`, `sentiment`), the top 3 of each with
their probabilities (`emotions`, `sentiments`: [{"label", "confidence"}], descending), every
probability (`emotion_probs`, `sentiment_probs`: {label: p} in label order), for a model that
reads faces the share of sampled frames with a face (`face_frames`), the most faces seen in one
sampled frame (`faces_in_frame`) and the rule that chose the face read (`face_choice`: "only face",
"speaking face", "largest", or null without a face; see `emosent.data.face_tracks`), and for a late-fusion model
each of its experts: its top emotion and sentiment with their probabilities, or null where it
abstained. A number that is NaN or infinite is never written: the record is refused with an
error naming the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from emosent.data import Utterance
from emosent.data.face_tracks import FACE_CHOICES, FACE_FACTS
from emosent.labels import EMOTIONS, SENTIMENTS

TOP_K = 3
CONFIDENCE_DECIMALS = 4  # the top-k confidences, as a reader compares them
PROB_DECIMALS = 6  # the full distributions: short JSON, and equal runs give equal text
FACE_DECIMALS = 3


@dataclass(frozen=True)
class Recorder:
    """Turns a batch of a model's output into its utterances' records.

    model: the model's name, for errors; experts: every expert of a late-fusion model, in its
    order (an expert the output lacks is written as abstaining), () for other models; faces:
    whether the model reads faces (then every record has `face_frames`, `faces_in_frame`, `face_choice`)."""

    model: str
    experts: tuple[str, ...] = ()
    faces: bool = False

    @classmethod
    def of(cls, model: torch.nn.Module, name: str | None = None) -> Recorder:
        """The recorder for `model`, named `name` or as `emosent.builtin.load_model` names it (`name_or_path`)."""
        experts = getattr(model, "experts", None)  # a late fusion's experts (a ModuleDict)
        faces = "video" in model.modalities and "frames" in model.processor.media  # its video encoder reads face crops
        name = name or getattr(model, "name_or_path", None) or type(model).__name__
        return cls(name, tuple(experts) if isinstance(experts, torch.nn.ModuleDict) else (), faces)

    def __call__(self, out, sources: Sequence[str], features: dict | None = None) -> list[dict]:
        """out: the model's EmotionSentimentOutput for B rows (emotion_logits (B, 7), sentiment_logits
        (B, 3), log-probabilities for a late-fusion model, and its experts); sources: where each row
        comes from, for errors; features: the encoders' outputs (`video_features` (B, D) ends with
        the share of frames with a face; faces_in_frame and face_choice (B,) the processor's face facts).
        Returns B records."""
        if len(sources) != len(out.emotion_logits):
            raise ValueError(f"{len(sources)} sources for {len(out.emotion_logits)} rows of output")
        emotion, sentiment = out.emotion_logits.detach().float().softmax(-1).cpu(), out.sentiment_logits.detach().float().softmax(-1).cpu()
        finite = torch.isfinite(out.emotion_logits).all(-1).cpu() & torch.isfinite(out.sentiment_logits).all(-1).cpu()
        experts = {name: (e.detach().float().exp().cpu(), s.detach().float().exp().cpu(), present.cpu())
                   for name, (e, s, present) in (out.experts or {}).items()}
        video = (features or {}).get("video_features")
        face = video[:, -1].detach().float().cpu() if self.faces and video is not None else None
        counts, choices = ((features or {}).get(k) for k in FACE_FACTS)
        records = []
        for j, source in enumerate(sources):
            if not finite[j]:
                self.refuse(source, "its emotion or sentiment scores")
            record = distributions(emotion[j], sentiment[j])
            if self.faces:
                record["face_frames"] = None if face is None else self.number(face[j], source, "face_frames", FACE_DECIMALS)
                record["faces_in_frame"] = None if counts is None else int(counts[j])
                record["face_choice"] = None if choices is None or choices[j] < 0 else FACE_CHOICES[int(choices[j])]
            if self.experts:
                record["experts"] = {name: self.expert(name, experts.get(name), j, source) for name in self.experts}
            records.append(record)
        return records

    def expert(self, name: str, output, j: int, source: str) -> dict | None:
        """One expert's part of row j: its top labels and distributions, or None where it abstained."""
        if output is None or not output[2][j]:
            return None
        e, s, _ = output
        if not (torch.isfinite(e[j]).all() and torch.isfinite(s[j]).all()):
            self.refuse(source, f"its {name} expert")
        top = distributions(e[j], s[j])
        return {"emotion": top["emotions"][0], "sentiment": top["sentiments"][0],
                "emotion_probs": top["emotion_probs"], "sentiment_probs": top["sentiment_probs"]}

    def number(self, value: torch.Tensor, source: str, what: str, decimals: int) -> float:
        if not torch.isfinite(value):
            self.refuse(source, what)
        return round(float(value), decimals)

    def refuse(self, source: str, what: str):
        raise ValueError(f"model {self.model} produced NaN/inf for {source} ({what}); nothing is written for it: "
                         "the model's weights or this input are broken (retrain it, or check the input)")

    def blank(self) -> dict:
        """A record's fields, all null: the row of an utterance the model did not see (skipped)."""
        return dict.fromkeys(("emotion", "sentiment", "emotions", "sentiments", "emotion_probs", "sentiment_probs",
                              *(("face_frames", *FACE_FACTS) if self.faces else ()), *(("experts",) if self.experts else ())))


def distributions(emotion: torch.Tensor, sentiment: torch.Tensor) -> dict:
    """Probabilities emotion (7,) and sentiment (3,) -> the record's labels, top 3 and distributions."""
    e, s = top_k(emotion, EMOTIONS), top_k(sentiment, SENTIMENTS)
    return {"emotion": e[0]["label"], "sentiment": s[0]["label"], "emotions": e, "sentiments": s,
            "emotion_probs": {label: round(p, PROB_DECIMALS) for label, p in zip(EMOTIONS, emotion.tolist())},
            "sentiment_probs": {label: round(p, PROB_DECIMALS) for label, p in zip(SENTIMENTS, sentiment.tolist())}}


def top_k(p: torch.Tensor, labels: tuple[str, ...], k: int = TOP_K) -> list[dict]:
    values, indices = p.topk(k)
    return [{"label": labels[i], "confidence": round(v, CONFIDENCE_DECIMALS)} for v, i in zip(values.tolist(), indices.tolist())]


def utterance_row(u: Utterance, file: str, record: dict, skip: str | None = None, error: str | None = None) -> dict:
    """A dataset's row (`predict`'s output, `evaluate`'s predictions.jsonl): where the utterance is,
    who speaks (the manifest's `speaker` column, or the segment's speaker; null where unknown), its
    labels when the manifest has them, its record (`Recorder.blank()` for a skipped one), and
    `skip`/`error` (null, or why it has no prediction). Flat at the top, so a row is a Parquet row."""
    row = {"file": file, "source": u.source, "start": u.start, "end": u.end, "text": u.text, "speaker": u.speaker}
    if u.emotion is not None or u.sentiment is not None:
        row.update(label_emotion=u.emotion, label_sentiment=u.sentiment)
    return row | record | {"skip": skip, "error": error}
