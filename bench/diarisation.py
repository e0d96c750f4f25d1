"""Diarisation error rate of emosent.speakers.diarise on conversations assembled from real speech.

    .venv/bin/python bench/diarisation.py [--conversations 8] [--data ../shared/data]
    .venv/bin/python bench/diarisation.py --tune     # DISTANCE_THRESHOLD, on RAVDESS actors 01-14 only
    .venv/bin/python bench/diarisation.py --asr      # also: segments from speech recognition, not the turns

Speakers (test): the GRID clips of ../shared/data/video/grid (10 people, 3 s each; grid-C has two
clips), CREMA-D actors 1001 and 1002 (6 clips each, 2 s), RAVDESS actors 15-18 (ravdess16k, 60
clips each). Each recording's leading and trailing silence is cut; a person's recordings, in a
seeded random order, are their stream of speech. A conversation of K people: each person's stream
is cut into turns of 1-5 s (uniform; at most MAX_TURNS, never reusing audio, so a GRID person
speaks once or twice), the turns are shuffled so that nobody speaks twice in a row where that can
be avoided, and joined with 0.2-0.6 s of silence into an MP4 (AAC) in a temporary folder.
diarise() reads the MP4 with the turns as its segments (oracle boundaries: the subtitle case),
once finding the number of speakers itself and once told it (`--speakers N`). With --asr, also
as analyze runs without subtitles: the segments are what emosent's speech recognition (the
packaged Whisper-base) finds in the MP4, so missed speech, false alarms and a segment that spans
two people's turns count against it too (English forced, as `--language en`; the row's confusion,
missed speech and false alarm are printed beside it).

DER: pyannote.metrics' DiarizationErrorRate (no collar, the whole conversation scored), summed
over the conversations of each size, against two baselines in the same run: everything one
speaker, and a new speaker at every turn. "ravdess only" rows draw everyone from RAVDESS 15-18
(one studio, one sentence pair: only the voice differs); "mixed" rows draw from all 16 people.
--tune builds the same conversations from RAVDESS actors 01-14 and picks the threshold with the
lowest DER summed over 2, 3 and 4 speakers; it never sees the test people.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import torch

import machine
from emosent.segments import Segment, transcribe
from emosent.speakers import SAMPLE_RATE_HZ, cluster, decode_audio, diarise, embed, speech_of
from emosent.synthetic import write_clip

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TURN_S = (1.0, 5.0)
GAP_S = (0.2, 0.6)
MAX_TURNS = 6  # per person in one conversation
SIZES = (2, 3, 4)
TRIM_TOP_DB = 30.0


def trimmed(path: Path) -> np.ndarray:
    samples = decode_audio(path)
    return librosa.effects.trim(samples, top_db=TRIM_TOP_DB)[0]


def test_people(data: Path) -> dict[str, list[Path]]:
    """person -> recordings: GRID (by transcripts.csv's speaker), CREMA-D 1001/1002, RAVDESS 15-18."""
    people: dict[str, list[Path]] = {}
    grid = data / "video" / "grid"
    with open(grid / "transcripts.csv", newline="") as f:
        for row in csv.DictReader(f):
            people.setdefault(row["speaker"], []).append(grid / row["path"])
    crema = data / "video" / "crema-d"
    for actor in ("1001", "1002"):
        people[f"crema-{actor}"] = sorted(crema.glob(f"{actor}_*"))
    people |= ravdess_people(data, range(15, 19))
    return people


def ravdess_people(data: Path, actors) -> dict[str, list[Path]]:
    root = data / "ravdess16k"
    people: dict[str, list[Path]] = {}
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if int(row["actor"]) in actors:
                people.setdefault(f"ravdess-{int(row['actor']):02d}", []).append(root / row["path"])
    return people


class Streams:
    """Each person's speech, decoded once; a seeded order of their recordings per conversation."""

    def __init__(self, people: dict[str, list[Path]]):
        self.people, self.cache = people, {}

    def stream(self, person: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
        """At least `seconds` of the person's speech (or all there is), recordings in a random order."""
        out, total = [], 0
        for k in rng.permutation(len(self.people[person])):
            path = self.people[person][k]
            if path not in self.cache:
                self.cache[path] = trimmed(path)
            out.append(self.cache[path])
            total += len(self.cache[path])
            if total >= seconds * SAMPLE_RATE_HZ:
                break
        return np.concatenate(out)


def conversation(streams: Streams, people: list[str], seed: int) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """(samples, turns as (start, end, person)): see the module docstring."""
    rng = np.random.default_rng(seed)
    turns: list[tuple[str, np.ndarray]] = []
    for person in people:
        stream, at = streams.stream(person, rng, MAX_TURNS * TURN_S[1]), 0
        for _ in range(MAX_TURNS):
            n = round(rng.uniform(*TURN_S) * SAMPLE_RATE_HZ)
            if len(stream) - at < TURN_S[0] * SAMPLE_RATE_HZ:
                break
            turns.append((person, stream[at : at + n]))
            at += n
    order = alternate([p for p, _ in turns], rng)
    audio, spans, t = [], [], 0
    for i in order:
        person, samples = turns[i]
        gap = np.zeros(round(rng.uniform(*GAP_S) * SAMPLE_RATE_HZ), np.float32)
        audio += [samples, gap]
        spans.append((t / SAMPLE_RATE_HZ, (t + len(samples)) / SAMPLE_RATE_HZ, person))
        t += len(samples) + len(gap)
    return np.concatenate(audio), spans


def alternate(owners: list[str], rng: np.random.Generator) -> list[int]:
    """A random order of the turns in which nobody speaks twice running where that can be avoided:
    each next turn is drawn from the people other than the last, weighted by the turns they have left."""
    left = {p: [i for i, o in enumerate(owners) if o == p] for p in dict.fromkeys(owners)}
    order, last = [], None
    while any(left.values()):
        choices = [p for p, ids in left.items() if ids and p != last] or [p for p, ids in left.items() if ids]
        weights = np.array([len(left[p]) for p in choices], float)
        last = choices[rng.choice(len(choices), p=weights / weights.sum())]
        order.append(left[last].pop(0))
    return order


def annotation(spans):
    from pyannote.core import Annotation, Segment as Span

    out = Annotation()
    for k, (start, end, who) in enumerate(spans):
        out[Span(start, end), k] = who
    return out


def scored(spans):
    """The part scored: the whole conversation, first turn's start to last turn's end."""
    from pyannote.core import Segment as Span, Timeline

    return Timeline([Span(spans[0][0], spans[-1][1])])


def write_mp4(path: Path, audio: np.ndarray) -> Path:
    return write_clip(path, duration_s=len(audio) / SAMPLE_RATE_HZ,
                      audio_fn=lambda times: audio[np.minimum((times * SAMPLE_RATE_HZ).astype(int), len(audio) - 1)])


def der_table(name: str, streams: Streams, pool: list[str], n_conversations: int, tmp: Path, seed0: int,
              asr: bool = False) -> None:
    from pyannote.metrics.diarization import DiarizationErrorRate

    for size in SIZES:
        metrics = {k: DiarizationErrorRate(collar=0.0, skip_overlap=False)
                   for k in ("emosent", "emosent --speakers N", "one speaker", "every turn", *(("emosent, ASR segments",) if asr else ()))}
        found_sizes, seconds, spent = [], 0.0, 0.0
        for c in range(n_conversations):
            seed = seed0 + 1000 * size + c
            people = list(np.random.default_rng(seed).choice(pool, size, replace=False))
            audio, spans = conversation(streams, people, seed)
            video = write_mp4(tmp / f"{name}-{size}-{c}.mp4", audio)
            segments = [Segment(a, b, "") for a, b, _ in spans]
            started = time.perf_counter()
            found = diarise(video, segments)
            spent += time.perf_counter() - started
            told = diarise(video, segments, speakers=size)  # the number of people given, as --speakers N does
            reference = annotation(spans)
            uem = scored(spans)
            if asr:  # as analyze without subtitles: speech recognition's segments, then diarise
                heard = diarise(video, transcribe(video, language="en").segments)
                metrics["emosent, ASR segments"](reference, annotation([(s.start, s.end, s.speaker or "none") for s in heard]), uem=uem)
            video.unlink()
            for key, labels in (("emosent", [s.speaker or "none" for s in found]),
                                ("emosent --speakers N", [s.speaker or "none" for s in told]), ("one speaker", ["A"] * len(spans)),
                                ("every turn", [f"T{k}" for k in range(len(spans))])):
                metrics[key](reference, annotation([(a, b, w) for (a, b, _), w in zip(spans, labels)]), uem=uem)
            found_sizes.append(len({s.speaker for s in found}))
            seconds += len(audio) / SAMPLE_RATE_HZ
        figures = ", ".join(f"{k} {abs(m):.1%}" for k, m in metrics.items())
        if asr:  # what the ASR row's error is made of, as shares of the reference speech
            parts = metrics["emosent, ASR segments"].accumulated_
            figures += " (" + ", ".join(f"{k} {parts[k] / parts['total']:.1%}" for k in ("confusion", "missed detection", "false alarm")) + ")"
        print(f"| {name} | {size} | {n_conversations} | {seconds / n_conversations:.0f} s | {figures} | "
              f"{np.mean(found_sizes):.2f} (range {min(found_sizes)}-{max(found_sizes)}) | {spent / seconds:.3f} |", flush=True)


def tune(data: Path, n_conversations: int, tmp: Path) -> None:
    """DER per threshold on RAVDESS actors 01-14 conversations: embeddings once, clustering per threshold."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    people = ravdess_people(data, range(1, 15))
    streams = Streams(people)
    cases = []
    for size in SIZES:
        for c in range(n_conversations):
            seed = 77_000 + 1000 * size + c
            chosen = list(np.random.default_rng(seed).choice(sorted(people), size, replace=False))
            audio, spans = conversation(streams, chosen, seed)
            video = write_mp4(tmp / "tune.mp4", audio)  # through AAC, as the test conversations
            decoded = decode_audio(video)
            speeches = [speech_of(decoded[round(a * SAMPLE_RATE_HZ) : round(b * SAMPLE_RATE_HZ)]) for a, b, _ in spans]
            cases.append((size, spans, embed(speeches)))
    print("| threshold | " + " | ".join(f"DER {s} speakers" for s in SIZES) + " | all |")
    best = None
    for threshold in np.arange(0.80, 1.42, 0.05):
        metrics = {s: DiarizationErrorRate(collar=0.0, skip_overlap=False) for s in SIZES}
        for size, spans, embeddings in cases:
            labels = cluster(embeddings, None, float(threshold))
            metrics[size](annotation(spans), annotation([(a, b, str(k)) for (a, b, _), k in zip(spans, labels)]),
                          uem=scored(spans))
        total = sum(abs(m) for m in metrics.values()) / len(SIZES)
        print(f"| {threshold:.2f} | " + " | ".join(f"{abs(metrics[s]):.1%}" for s in SIZES) + f" | {total:.1%} |", flush=True)
        best = min(best or (total, threshold), (total, threshold))
    print(f"lowest mean DER {best[0]:.1%} at threshold {best[1]:.2f}")
    metrics = {s: DiarizationErrorRate(collar=0.0, skip_overlap=False) for s in SIZES}
    for size, spans, embeddings in cases:  # as --speakers N: the number of people given
        labels = cluster(embeddings, size)
        metrics[size](annotation(spans), annotation([(a, b, str(k)) for (a, b, _), k in zip(spans, labels)]), uem=scored(spans))
    print("| told N | " + " | ".join(f"{abs(metrics[s]):.1%}" for s in SIZES) + f" | {sum(abs(m) for m in metrics.values()) / len(SIZES):.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--conversations", type=int, default=8, help="per number of speakers")
    parser.add_argument("--tune", action="store_true", help="choose the distance threshold on RAVDESS actors 01-14")
    parser.add_argument("--asr", action="store_true", help="also score diarise on the segments speech recognition finds")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {machine.describe('cpu')}; load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="emosent-diarisation-") as tmp:
        if args.tune:
            return tune(args.data, args.conversations, Path(tmp))
        people = test_people(args.data)
        streams = Streams(people)
        print("| people | speakers | conversations | mean length | DER (total over the conversations) | speakers found | "
              "diarise s per s of audio |\n|---|---|---|---|---|---|---|")
        der_table("mixed", streams, sorted(people), args.conversations, Path(tmp), seed0=0, asr=args.asr)
        der_table("ravdess only", streams, [p for p in people if p.startswith("ravdess")], args.conversations, Path(tmp),
                  seed0=500, asr=args.asr)


if __name__ == "__main__":
    main()
