"""Utterances -> batches for the model. Bad items are dropped and counted, never fatal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from emosent.data.manifest import Utterance
from emosent.data.media import MEDIA_MODALITIES, MediaError, load_clip
from emosent.labels import EMOTIONS, SENTIMENTS

MAX_TOKENS = 128


class UtteranceDataset(Dataset):
    """Items for any non-empty subset of ("text", "video", "audio"); text alone opens no file.

    An item that cannot be read comes back as {"index", "skip": reason, "error": message}.
    """

    def __init__(self, utterances: list[Utterance], modalities: tuple[str, ...]):
        if not modalities:
            raise ValueError("modalities must be a non-empty subset of ('text', 'video', 'audio')")
        self.utterances = utterances
        self.modalities = tuple(modalities)
        self.media = tuple(m for m in MEDIA_MODALITIES if m in modalities)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        u = self.utterances[index]
        item = {"index": index}
        if u.emotion is not None:
            item.update(emotion=EMOTIONS.index(u.emotion), sentiment=SENTIMENTS.index(u.sentiment))
        if "text" in self.modalities:
            if not u.text:
                return {"index": index, "skip": "empty text", "error": f"{u.source}: the utterance text is empty"}
            item["text"] = u.text
        if self.media:
            if u.path is None:
                return {"index": index, "skip": "no media path", "error": f"{u.source}: no media file given"}
            try:
                clip = load_clip(u.path, u.start, u.end, modalities=self.media)
            except MediaError as err:
                return {"index": index, "skip": err.reason, "error": f"{u.source}: {err}"}
            item.update({m: getattr(clip, m) for m in self.media})
        return item


@dataclass
class Collator:
    """Items -> a batch: tokenised text padded to the batch's longest (at most MAX_TOKENS),
    stacked media, labels, and the dropped items' reasons under "skipped"."""

    tokenizer: object | None = None
    max_tokens: int = MAX_TOKENS

    def __call__(self, items: list[dict]) -> dict:
        good = [it for it in items if "skip" not in it]
        batch: dict = {"skipped": [(it["index"], it["skip"], it["error"]) for it in items if "skip" in it]}
        batch["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
        for label in ("emotion", "sentiment"):
            if all(label in it for it in good):
                batch[label] = torch.tensor([it[label] for it in good], dtype=torch.long)
        if not good:
            return batch
        if "text" in good[0]:
            tokens = self.tokenizer(
                [it["text"] for it in good], truncation=True, max_length=self.max_tokens, padding="longest", return_tensors="pt"
            )
            batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        for m in MEDIA_MODALITIES:
            if m in good[0]:
                batch[m] = torch.stack([it[m] for it in good])  # (B, T, 3, 112, 112) or (B, 1, M, F)
        return batch


@dataclass
class SkipCounter:
    """Counts dropped items over a pass and says so in one line."""

    seen: int = 0
    reasons: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def update(self, batch: dict) -> None:
        self.seen += len(batch["index"]) + len(batch["skipped"])
        for _, reason, error in batch["skipped"]:
            self.reasons[reason] += 1
            if len(self.first_errors) < 3:
                self.first_errors.append(error)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def summary(self, what: str = "clips") -> str:
        if not self.skipped:
            return f"skipped 0 of {self.seen} {what}"
        by_reason = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
        return f"skipped {self.skipped} of {self.seen} {what}: {by_reason} (e.g. {self.first_errors[0]})"

    def reset(self) -> None:
        self.seen, self.reasons, self.first_errors = 0, Counter(), []
