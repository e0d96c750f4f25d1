"""Who speaks each utterance: voice embeddings of the segments, clustered into speakers.

The embeddings come from the GE2E speaker encoder of Resemblyzer 0.1.4 (Apache-2.0; a 3-layer LSTM
over 40-band mel frames, 256-d L2-normed output), vendored here with its weights converted to
safetensors (tools/convert_voice_encoder_weights.py; sha256 checked on load). Segments are
clustered with SciPy's agglomerative (hierarchical) clustering, Ward's linkage on the unit-length
voice prints (Euclidean distance there is a function of the cosine): the number of speakers is
where the merge distance passes DISTANCE_THRESHOLD (tuned on RAVDESS actors 01-14,
bench/diarisation.py --tune), or the number given. Speakers are named S1, S2, ... in order of
first appearance; segments that already name their speaker (a transcript, WebVTT voice tags,
"NAME: text" cues) keep the name and are not diarised.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from emosent.data.media import SILENT_PEAK, audio_window, open_media, probe
from emosent.segments import Segment

WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "ge2e_voice_encoder.safetensors"
WEIGHTS_SHA256 = "bc03d014d1116996dd3f15fff20de9c1d53c627b0a66e552a9ae5c5db63dbae4"
# Resemblyzer's hparams.py: the encoder was trained on these frames; changing one breaks it.
SAMPLE_RATE_HZ = 16_000
MEL_WINDOW_MS, MEL_STEP_MS, N_MELS = 25, 10, 40
N_FFT = SAMPLE_RATE_HZ * MEL_WINDOW_MS // 1000
PARTIAL_FRAMES = 160  # 1.6 s: the encoder reads a segment in windows this long ...
# ... started this often: side by side, the lowest rate Resemblyzer allows (its default, 1.3, overlaps
# them by half and costs 1.5x: diarisation must stay within 15% of analyze's time)
PARTIALS_PER_S = 0.625
MIN_COVERAGE = 0.75  # a last window less than this full of audio is dropped (unless it is the only one)
TARGET_DBFS = -30.0  # quiet speech is raised to this loudness (never lowered), as Resemblyzer does
HIDDEN, EMBEDDING, LAYERS = 256, 256, 3
TRIM_TOP_DB = 30.0  # pauses quieter than the segment's peak by this much are cut before embedding
MIN_SPEECH_S = 0.2  # less speech than this gives no usable voice print: the segment gets no speaker
# Ward's merge distance (the rise in within-group squared distance, on unit voice prints) under which
# they are one speaker. Tuned on RAVDESS actors 01-14 (bench/diarisation.py --tune), never on the
# conversations DER is measured on.
# Average linkage on cosine distance (0.36) gave a mean DER of 25.5% on the tuning conversations;
# Ward's at 1.05, 15.4% (12.4% told the number of speakers; BENCHMARKS.md, "Speakers").
DISTANCE_THRESHOLD = 1.05
BATCH = 64  # windows per forward pass


class VoiceEncoder(nn.Module):
    """GE2E speaker encoder: mels (B, F, N_MELS) -> embeddings (B, EMBEDDING), non-negative, L2-normed."""

    def __init__(self):
        super().__init__()
        # (N_MELS, N_FFT // 2 + 1): librosa 0.11's mel filters for these settings, saved with the
        # weights by the converter, so that reading them needs no librosa import (seconds)
        self.register_buffer("mel_basis", torch.zeros(N_MELS, N_FFT // 2 + 1))
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # hidden: (LAYERS, B, HIDDEN)
        embeds = torch.relu(self.linear(hidden[-1]))  # (B, EMBEDDING)
        return embeds / embeds.norm(dim=1, keepdim=True).clamp_min(1e-12)


@lru_cache(maxsize=1)
def load_voice_encoder(path: Path = WEIGHTS_FILE) -> VoiceEncoder:
    """The packaged encoder in eval mode, after checking its sha256 (loaded once per process)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ValueError(f"{path}: sha256 {digest} differs from the voice encoder weights emosent ships "
                         f"({WEIGHTS_SHA256}): reinstall emosent")
    encoder = VoiceEncoder()
    encoder.load_state_dict(load_file(path))
    # frozen: called in or out of inference mode alike (a first load inside inference_mode makes
    # inference tensors, which autograd may not record)
    return encoder.eval().requires_grad_(False)


def decode_audio(path: str | Path) -> np.ndarray:
    """The whole audio track of `path` as mono float32 at SAMPLE_RATE_HZ, decoded once with PyAV
    (4 bytes a sample: 230 MB for an hour)."""
    duration = probe(path).duration_s
    with open_media(path) as container:
        return audio_window(container, 0.0, duration + 1.0, SAMPLE_RATE_HZ)


def speech_of(samples: np.ndarray) -> np.ndarray:
    """The voiced parts of one segment, joined, raised to TARGET_DBFS if quieter."""
    if samples.size == 0 or np.abs(samples).max() < SILENT_PEAK:
        return samples[:0]
    voiced = samples[voiced_mask(samples)]
    gain_db = TARGET_DBFS - 20 * math.log10(float(np.sqrt(np.mean(voiced ** 2))) + 1e-12)
    return voiced * 10 ** (max(gain_db, 0.0) / 20)


def voiced_mask(samples: np.ndarray, frame: int = 2048, hop: int = 512) -> np.ndarray:
    """(N,) bool: samples in frames whose mean power is within TRIM_TOP_DB of the loudest frame's,
    as librosa.effects.split finds them (same frames, centred with zero padding). Not librosa's
    own: importing librosa.effects takes 1-4 s, more than the rest of diarisation on a 60 s video."""
    padded = np.pad(samples, frame // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]  # (frames, frame)
    power = (frames.astype(np.float64) ** 2).mean(axis=1)
    loud = power > power.max() * 10 ** (-TRIM_TOP_DB / 10)
    return np.repeat(loud, hop)[: len(samples)]  # frame i stands for [i*hop, (i+1)*hop), as split's intervals do


def windows(speech: np.ndarray) -> np.ndarray:
    """(P, PARTIAL_FRAMES, N_MELS) mel windows of one segment's speech, as Resemblyzer cuts them
    (its compute_partial_slices): padded with zeros to cover the last window."""
    hop = SAMPLE_RATE_HZ * MEL_STEP_MS // 1000
    n_frames = math.ceil((len(speech) + 1) / hop)
    step = round(SAMPLE_RATE_HZ / PARTIALS_PER_S / hop)
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (len(speech) - starts[-1] * hop) / (PARTIAL_FRAMES * hop)
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts = starts[:-1]
    speech = np.pad(speech, (0, max(0, (starts[-1] + PARTIAL_FRAMES) * hop - len(speech))))
    n_fft = N_FFT
    # librosa.feature.melspectrogram's power mel (Hann window, centred, zero padding), by torch.stft:
    # librosa's own spectral modules take seconds to import, longer than this whole stage
    spec = torch.stft(torch.from_numpy(speech), n_fft, hop, window=torch.hann_window(n_fft), center=True, pad_mode="constant",
                      return_complex=True)
    mel = (load_voice_encoder().mel_basis @ spec.abs().pow(2)).T.numpy()  # (F, N_MELS)
    return np.stack([mel[s : s + PARTIAL_FRAMES] for s in starts])


@torch.inference_mode()
def embed(speeches: list[np.ndarray], encoder: VoiceEncoder | None = None) -> np.ndarray:
    """(N, EMBEDDING): one L2-normed voice print per segment's speech (the mean of its windows')."""
    encoder = encoder or load_voice_encoder()
    per_segment = [windows(s) for s in speeches]
    stacked = torch.from_numpy(np.concatenate(per_segment))  # (P, PARTIAL_FRAMES, N_MELS), all segments
    partial = torch.cat([encoder(stacked[i : i + BATCH]) for i in range(0, len(stacked), BATCH)]).numpy()
    bounds = np.cumsum([0] + [len(w) for w in per_segment])
    means = np.stack([partial[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def cluster(embeddings: np.ndarray, speakers: int | None = None, threshold: float = DISTANCE_THRESHOLD) -> np.ndarray:
    """(N,) cluster index per unit-length embedding: `speakers` clusters, or as many as the
    threshold gives (groups whose Ward merge distance is under it are joined). SciPy's hierarchical
    clustering, the same merges as scikit-learn's AgglomerativeClustering(linkage="ward"), whose
    import takes seconds."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(embeddings) < 2:
        return np.zeros(len(embeddings), int)
    tree = linkage(embeddings.astype(np.float64), method="ward")
    if speakers is not None:
        return fcluster(tree, min(speakers, len(embeddings)), criterion="maxclust") - 1
    return fcluster(tree, threshold, criterion="distance") - 1


def check_speakers(speakers: int | None) -> None:
    if speakers is not None and (isinstance(speakers, bool) or not isinstance(speakers, int) or speakers < 1):
        raise ValueError(f"--speakers must be a whole number of at least 1, got {speakers!r}")


def diarise(video: str | Path, segments: list[Segment], speakers: int | None = None,
            warnings: list[str] | None = None) -> list[Segment]:
    """`segments` (in their order) with `speaker` filled: the ones that name a speaker keep it; the
    others get S1, S2, ... (in order of first appearance; a name already used is skipped) from the
    voice in `video` over [start, end]. `speakers`: how many voices the unnamed segments hold, or
    None to find out. A segment with under MIN_SPEECH_S of sound keeps speaker None (noted in
    `warnings`), as do all where `video` has no audio."""
    check_speakers(speakers)
    warnings = warnings if warnings is not None else []
    todo = [i for i, s in enumerate(segments) if s.speaker is None]
    if not todo:
        if speakers is not None:
            warnings.append(f"--speakers {speakers} not used: every segment names its speaker")
        return list(segments)
    if not probe(video).has_audio:
        warnings.append(f"{video}: no audio stream, so speakers cannot be told apart by voice")
        return list(segments)
    try:
        audio = decode_audio(video)
    except av.FFmpegError as err:  # a damaged audio stream: the model's own reading skips what it cannot read
        warnings.append(f"{video}: the audio could not be decoded to tell speakers apart ({err}); speakers left empty")
        return list(segments)
    speech = {i: speech_of(audio[round(segments[i].start * SAMPLE_RATE_HZ) : round(segments[i].end * SAMPLE_RATE_HZ)])
              for i in todo}
    voiced = [i for i in todo if len(speech[i]) >= MIN_SPEECH_S * SAMPLE_RATE_HZ]
    if len(voiced) < len(todo):
        warnings.append(f"{video}: {len(todo) - len(voiced)} of {len(todo)} segments hold too little sound to tell "
                        "who speaks: their speaker is left empty")
    if not voiced:
        return list(segments)
    labels = cluster(embed([speech[i] for i in voiced]), speakers)
    names = speaker_names(labels[np.argsort([segments[i].start for i in voiced], kind="stable")],
                          {s.speaker for s in segments if s.speaker is not None})
    out = list(segments)
    for i, label in zip(voiced, labels):
        out[i] = replace(segments[i], speaker=names[label])
    return out


def speaker_names(labels_in_time_order: np.ndarray, taken: set[str]) -> dict[int, str]:
    """Cluster index -> "S1", "S2", ... in order of first appearance, skipping names in `taken`."""
    names: dict[int, str] = {}
    number = 0
    for label in labels_in_time_order.tolist():
        if label not in names:
            number += 1
            while f"S{number}" in taken:
                number += 1
            names[label] = f"S{number}"
    return names
