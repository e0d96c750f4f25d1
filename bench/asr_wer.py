"""Speech recognition with the language detected vs forced to English (issue 26, points 4 and 5).

The packaged Whisper-base through the package's own path (`emosent.segments.transcribe`: Silero
VAD, words grouped into utterances), on every real clip with known words in ../shared/data:

* the 11 GRID clips (read commands; `transcripts.csv`),
* the 12 CREMA-D clips (6 FLV of actor 1001, 6 MP3 of actor 1002), all "Don't forget a jacket";

word error rate (jiwer) per corpus with the language left to Whisper and forced to English, and
how often the detected language is English, with its probability. Beside them, in the same run:
an empty transcript (WER 1.0 by definition, so a result near it is no result), the majority
"language" (English: every real clip here is English, so detection can only lose to it here), and
espeak-ng speaking one sentence in each of 7 languages (synthetic voices: the only non-English
speech available offline) to show what detection buys where the majority guess is wrong. A second
detection rule is measured on the same audio: the speech repeated to fill Whisper's 30 s window
instead of padding it with silence.

Run: PYTHONPATH=src .venv/bin/python bench/asr_wer.py   (about 5 min on 2 shared cores)
"""

from __future__ import annotations

import argparse
import csv
import functools
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

from emosent import segments
from emosent.segments import transcribe

import machine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"
CREMA_D_SENTENCE = "don't forget a jacket"
DIGITS = "zero one two three four five six seven eight nine".split()
# One sentence per language for espeak-ng (voice = Whisper's code, but "pt" is espeak's "pt").
ESPEAK = {"en": "Good morning, how are you today? The weather is very nice.",
          "fr": "Bonjour, comment allez-vous aujourd'hui? Il fait très beau ce matin.",
          "de": "Guten Morgen, wie geht es Ihnen heute? Das Wetter ist sehr schön.",
          "es": "Buenos días, ¿cómo está usted hoy? Hace muy buen tiempo.",
          "it": "Buongiorno, come sta oggi? Il tempo è molto bello stamattina.",
          "pt": "Bom dia, como você está hoje? O tempo está muito bonito.",
          "nl": "Goedemorgen, hoe gaat het vandaag met u? Het weer is erg mooi."}


def spelled(text: str) -> str:
    """Lower case, digits spelled out ("F2," -> "f two"), no punctuation but apostrophes: GRID's
    references spell letters and digits, Whisper writes "F2"."""
    text = re.sub(r"(?<=[a-z])(?=\d)", " ", text.lower())
    text = re.sub(r"\d", lambda m: f" {DIGITS[int(m.group())]} ", text)
    return " ".join(re.sub(r"[^a-z' ]", " ", text).split())


def real_clips() -> list[tuple[str, Path, str]]:
    """(corpus, clip, reference words) for every real clip with known words."""
    grid = DATA / "grid"
    with open(grid / "transcripts.csv", newline="") as f:
        clips = [("GRID", grid / row["path"], row["reference_transcript"]) for row in csv.DictReader(f)]
    crema = DATA / "crema-d"
    with open(crema / "labels.csv", newline="") as f:
        clips += [("CREMA-D", crema / row["path"], CREMA_D_SENTENCE) for row in csv.DictReader(f)]
    return clips


def espeak_clips(folder: Path) -> list[tuple[str, Path]]:
    """(language, WAV) of espeak-ng saying ESPEAK's sentence in each language."""
    out = []
    for code, sentence in ESPEAK.items():
        path = folder / f"{code}.wav"
        subprocess.run(["espeak-ng", "-v", code, "-w", str(path), sentence], check=True, capture_output=True)
        out.append((code, path))
    return out


def tiled_language(recogniser, path: Path) -> tuple[str, float]:
    """The other rule: Silero VAD's speech repeated to fill Whisper's 30 s window."""
    from faster_whisper import decode_audio
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    audio = decode_audio(str(path), sampling_rate=16_000)
    chunks, _ = collect_chunks(audio, get_speech_timestamps(audio, VadOptions()))
    speech = np.concatenate(chunks) if chunks else audio
    window = recogniser.feature_extractor.n_samples
    language, probability, _ = recogniser.detect_language(audio=np.tile(speech, -(-window // len(speech)))[:window])
    return language, probability


def table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for Whisper (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        sys.exit(f"{DATA}: the shared real data is not here")
    started = time.perf_counter()
    # One model for every clip (transcribe loads it per call, as a CLI run does): the same weights.
    segments.load_asr_model = functools.cache(segments.load_asr_model)
    recogniser = segments.load_asr_model("base", "cpu")

    per_clip, by_corpus = [], {}
    for corpus, clip, reference in real_clips():
        detected, forced = transcribe(clip, device="cpu"), transcribe(clip, device="cpu", language="en")
        heard = {how: spelled(" ".join(s.text for s in t.segments)) for how, t in (("detected", detected), ("forced", forced))}
        tiled, tiled_p = tiled_language(recogniser, clip)
        by_corpus.setdefault(corpus, []).append((reference, heard, detected.language, tiled))
        per_clip.append([corpus, clip.name, reference, heard["detected"], heard["forced"],
                         f"{detected.language.code} {detected.language.probability:.2f}", f"{tiled} {tiled_p:.2f}"])

    summary = []
    for corpus, rows in by_corpus.items():
        refs = [r for r, *_ in rows]
        wer = {how: jiwer.process_words(refs, [h[how] for _, h, _, _ in rows]) for how in ("detected", "forced")}
        english = sum(lang.code == "en" for _, _, lang, _ in rows)
        summary.append([corpus, len(rows), sum(len(r.split()) for r in refs),
                        f"{wer['detected'].wer:.3f}", f"{wer['forced'].wer:.3f}", "1.000",
                        f"{english}/{len(rows)}", f"{min(lang.probability for _, _, lang, _ in rows):.2f}",
                        f"{sum(t == 'en' for *_, t in rows)}/{len(rows)}", f"{len(rows)}/{len(rows)}"])

    synthetic = []
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as folder:
            for code, path in espeak_clips(Path(folder)):
                heard = transcribe(path, device="cpu").language
                tiled, tiled_p = tiled_language(recogniser, path)
                synthetic.append([code, f"{heard.code} {heard.probability:.2f}", f"{tiled} {tiled_p:.2f}"])
    right = sum(row[0] == row[1].split()[0] for row in synthetic)
    right_tiled = sum(row[0] == row[2].split()[0] for row in synthetic)

    print(f"Machine: {machine.describe()}; {time.perf_counter() - started:.0f} s\n")
    print(table(summary, ["corpus", "clips", "words", "WER detected", "WER forced en", "WER empty transcript",
                          "detected English", "least probability", "tiled: English", "majority (English)"]))
    print("\n" + table(per_clip, ["corpus", "clip", "reference", "detected", "forced en", "language", "tiled"]))
    if synthetic:
        print(f"\nespeak-ng, one sentence per language: detected right {right}/{len(synthetic)}, tiled {right_tiled}/"
              f"{len(synthetic)}, always English 1/{len(synthetic)}")
        print(table(synthetic, ["spoken", "detected (as analyze)", "tiled"]))


if __name__ == "__main__":
    main()
