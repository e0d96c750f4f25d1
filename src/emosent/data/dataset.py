"""Utterances -> items for the model, and the count of those that could not be read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from emosent.data.manifest import Utterance


class UtteranceDataset(Dataset):
    """Utterances through a processor (`emosent.processor.Processor`, or any callable
    (utterance, index) -> item). An item that cannot be read comes back as {"index", "skip":
    reason, "error": message}; the processor's collate drops and counts it."""

    def __init__(self, utterances: list[Utterance], processor: Callable[[Utterance, int], dict]):
        self.utterances, self.processor = utterances, processor

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        return self.processor(self.utterances[index], index)


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
