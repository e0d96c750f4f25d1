"""The frozen Whisper-base features bench/voice.py compares recipes on, extracted once.

Every RAVDESS clip (actors 01-18) and the 12 real CREMA-D clips go through emosent's own reading
(`emosent.data.media`: PyAV, 16 kHz mono, Whisper's log-mel of the real audio only) and the
packaged Whisper-base encoder (CTranslate2, int8, as `emosent.encoders.whisper` runs it), cut after
each of its 6 layers (`whisper_base_layers_dir`). Kept per clip and layer: the mean and the
standard deviation of the 512-wide hidden states over time, (N, 6, 1024): every pooling the recipes
use. Variants of the input:

* clean: as the product reads it;
* cmvn: each mel band minus its mean over the clip's frames (plus the clip's overall mean, so the
  level stays where Whisper expects it): cepstral mean normalisation, which removes a fixed
  microphone and room colouring, the classic per-utterance channel normalisation;
* augment-R: RAVDESS clips only, round R (bench/voice.py uses R = 1) of a random chain of speed perturbation (0.9-1.1, speed
  and pitch together), reverberation (a synthetic exponential room response, RT60 0.2-0.7 s),
  band-limiting (telephone 300-3400 Hz or 4 kHz low-pass) and noise (white or pink, SNR 5-25 dB),
  each applied with probability 0.5 (at least one), drawn from seed R.

Letters: N clips, L layers, D = 1024 (mean, std of 512).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emosent.data.media import WHISPER_RATE_HZ, open_media, read_audio, whisper_mel
from emosent.encoders.whisper import WHISPER_LAYERS, band_mean_normalised, load_whisper_base

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RAVDESS, CREMA = DATA / "ravdess16k", DATA / "video" / "crema-d"
CREMA_EMOTION = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "joy", "NEU": "neutral", "SAD": "sadness"}


@dataclass(frozen=True)
class Clip:
    path: Path
    corpus: str  # "ravdess" or "crema-d"
    speaker: str
    statement: int  # RAVDESS: 1 "Kids are talking by the door", 2 "Dogs are sitting by the door"; CREMA-D: 0
    emotion: str


def clips() -> list[Clip]:
    """RAVDESS actors 01-18 (labels.csv) then the 12 CREMA-D clips (their labels.csv)."""
    out = []
    with open(RAVDESS / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            statement = int(Path(row["path"]).stem.split("-")[4])  # the file name's 5th field
            out.append(Clip(RAVDESS / row["path"], "ravdess", f"ravdess-{int(row['actor']):02d}", statement, row["emotion"]))
    with open(CREMA / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            out.append(Clip(CREMA / row["path"], "crema-d", f"crema-{row['speaker']}", 0, row["emotion"]))
    return out


def samples_of(path: Path) -> np.ndarray:
    with open_media(path) as container:
        return read_audio(container, None, None)


# --------------------------------------------------------------------------- augmentation


def speed(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resampled by 0.9-1.1: faster and higher, or slower and lower (Kaldi's speed perturbation)."""
    factor = rng.uniform(0.9, 1.1)
    n = int(len(x) / factor)
    return np.interp(np.arange(n) * factor, np.arange(len(x)), x).astype(np.float32)


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve

    rt60 = rng.uniform(0.2, 0.7)
    t = np.arange(int(rt60 * WHISPER_RATE_HZ)) / WHISPER_RATE_HZ
    response = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    response[0] = 1.0  # the direct sound
    wet = fftconvolve(x, response)[: len(x)]
    return (wet * np.abs(x).max() / max(np.abs(wet).max(), 1e-9)).astype(np.float32)


def band_limit(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    if rng.random() < 0.5:
        sos = butter(4, [300, 3400], btype="bandpass", fs=WHISPER_RATE_HZ, output="sos")  # telephone
    else:
        sos = butter(6, 4000, btype="lowpass", fs=WHISPER_RATE_HZ, output="sos")
    return sosfilt(sos, x).astype(np.float32)


def noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    snr_db = rng.uniform(5, 25)
    n = rng.standard_normal(len(x))
    if rng.random() < 0.5:  # pink: 1/f power
        spectrum = np.fft.rfft(n)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        n = np.fft.irfft(spectrum, len(x))
    power = max(float(np.mean(x**2)), 1e-10)
    n *= np.sqrt(power / 10 ** (snr_db / 10) / max(float(np.mean(n**2)), 1e-12))
    return (x + n).astype(np.float32)


AUGMENTS = (speed, reverb, band_limit, noise)  # in the order a recording would meet them


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chosen = rng.random(len(AUGMENTS)) < 0.5
    if not chosen.any():
        chosen[rng.integers(len(AUGMENTS))] = True
    for f, on in zip(AUGMENTS, chosen):
        if on:
            x = f(x, rng)
    return x


# ------------------------------------------------------------------------------- features


class LayerEncoder:
    """Whisper-base cut after each layer: (80, F) log-mel -> (L, 1024) mean and std per layer."""

    def __init__(self, layers: tuple[int, ...] = tuple(range(1, WHISPER_LAYERS + 1)), threads: int = 2):
        self.layers = layers
        self.models = [load_whisper_base(threads, k) for k in layers]

    def __call__(self, mel: torch.Tensor, frames: int, norm: str = "none") -> np.ndarray:
        import ctranslate2

        n = max(2, frames - frames % 2)  # as WhisperAudioEncoder.features: the strided convolution halves the frames
        real = mel[0, :, :n].numpy()  # (80, n)
        real = band_mean_normalised(real) if norm == "cmvn" else real  # the package's own, as --audio-norm cmvn runs it
        out = []
        for model in self.models:
            x = ctranslate2.StorageView.from_array(np.ascontiguousarray(real[None]))
            h = np.array(model.model.encode(x, to_cpu=True))[0]  # (n / 2, 512)
            out.append(np.concatenate([h.mean(0), h.std(0)]))
        return np.stack(out).astype(np.float32)  # (L, 1024)


def extract(variant: str, rows: list[Clip], out: Path, encoder: LayerEncoder) -> np.ndarray:
    """(N, L, 1024) for `variant` ("clean", "cmvn", "augment-R"), cached in out/VARIANT.npy."""
    path = out / f"{variant}.npy"
    if path.is_file():
        return np.load(path)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(variant.split("-")[1]) if variant.startswith("augment") else 0)
    result = np.zeros((len(rows), len(encoder.layers), 1024), np.float32)
    start = time.perf_counter()
    for i, clip in enumerate(rows):
        if variant.startswith("augment") and clip.corpus != "ravdess":
            continue  # only training clips are augmented; CREMA-D is a test set
        x = samples_of(clip.path)
        if variant.startswith("augment"):
            x = augment(x, rng)
        mel, frames = whisper_mel(x)
        result[i] = encoder(mel, frames, "cmvn" if variant == "cmvn" else "none")
        if i % 200 == 0:
            print(f"  {variant}: {i}/{len(rows)} clips, {time.perf_counter() - start:.0f} s", flush=True)
    np.save(path, result)
    print(f"  {variant}: {len(rows)} clips in {time.perf_counter() - start:.0f} s", flush=True)
    return result
