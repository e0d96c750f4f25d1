"""One clip -> the model's video and audio inputs. The only place media is read, for training,
feature extraction, `analyze` and serving alike.

Video: T frames sampled uniformly over the clip (or [start, end]): one from each of T equal bins.
The packets are demuxed once per file (cheap: no decoding; cached for the last few files) to
learn every frame's timestamp and where the keyframes are. A bin's frame is a keyframe when the
bin holds one, else its centre frame (its first frame when it is the last pick of its group of
pictures: see `pick_frames`); then only the groups of pictures that hold a wanted frame are
decoded, each from its keyframe up to its last wanted frame, on every core, skipping the
non-reference frames (B-frames) that are not wanted. Frames that seeking does not reach from their
keyframe (an MPEG transport stream's first group), and every frame of an MPEG program stream (see
LINEAR_FORMATS), come from a plain decode from the file's start: the same frames either way. The
frames go through the R3D-18 weights' own transforms.

Audio: decoded and resampled to mono at the processor's rate by PyAV (any codec FFmpeg decodes, in
READ_FORMATS), then a log-mel spectrogram, normalised per clip, padded or cut to a fixed width.

Files are opened by `open_media` alone: one audio or video file in one of READ_FORMATS, never a
playlist or a list that would have FFmpeg open the files it names.

Every setting (frames, frame size, rate, bands, window, hop, ...) comes in as a
`emosent.config.ProcessorConfig`; this module holds no preprocessing constants of its own.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import librosa
import numpy as np
import torch

from emosent.config import ProcessorConfig
from emosent.encoders import video_transform_weights

INDEX_CACHE_FILES = 4  # frame indexes kept per process (about 8 MB per hour of 25 fps video each)
MEDIA_MODALITIES = ("video", "audio")
DEFAULT = ProcessorConfig()
# Audio decoded before a window's start and dropped: after a seek, a transform codec's first frame
# lacks the one before it (AAC, MP3 and Vorbis frames overlap by up to 46 ms).
AUDIO_PREROLL_S = 0.2

# The demuxers media is read with, as FFmpeg names them (`container.format.name`): each reads one
# file and opens nothing else. Not here, on purpose: playlists and manifests (hls, dash), file
# lists (concat), image sequences (image2), tee, and every other demuxer that opens further files
# or URLs: an uploaded playlist naming a file on the server's disk would have that file read.
READ_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2",  # .mp4 .mov .m4a
    "matroska,webm",  # .mkv .webm
    "avi",
    "flv",
    "asf",  # .wmv .wma
    "mpeg",  # MPEG program stream: .mpg .vob
    "mpegts",  # .ts .m2ts
    "ogg",  # .ogg .opus
    "wav",
    "w64",
    "aiff",
    "mp3",
    "aac",  # ADTS
    "flac",
)
# Of READ_FORMATS, those whose seeks do not land on a packet's start: an MPEG program stream seeks
# by searching its bytes for timestamps, and after a seek its parser hands out garbled packets and
# frames labelled with a neighbour's timestamp (PES packets holding several frames). It is decoded
# from its start, as a plain loop does: the same frames, at a cost that grows with the file.
LINEAR_FORMATS = ("mpeg",)
OPEN_OPTIONS = {
    # FFmpeg refuses any other demuxer right after probing the file's first bytes, before it reads
    # the header: a playlist's entries are never opened
    "format_whitelist": ",".join(READ_FORMATS),
    # and nothing but a local file is opened, whatever a demuxer asks for
    "protocol_whitelist": "file",
}
# Frames larger than 8K UHD are refused before decoding: one 7680x4320 RGB frame is 100 MB, and
# FFmpeg's frame threads hold several at once. Frames up to it are scaled down as they are decoded
# (FFmpeg's scaler, see decode_size), so what stays in memory is what the model reads.
MAX_FRAME_PIXELS = 7680 * 4320
# Face crops (emosent.data.faces): the smallest face found is 1/8 of the frame's long side
# (MIN_FACE_SHARE) and is sampled at 2 x 64 px (twice FACE_SIZE): a long side of 1024 px gives
# such a face all the pixels its crop reads. Larger frames only cost memory.
FACE_FRAME_LONGEST = 1024
NOT_READ_HINT = ("emosent reads one audio or video file (mp4, mov, mkv, webm, avi, flv, mpg, ts, ogg, wav, mp3, "
                 "aac, flac, ...), never the files a playlist (.m3u8, .mpd) or list names: join them into one file first")


class MediaError(ValueError):
    """A clip that cannot give the requested inputs. `reason` is short, for counting skips."""

    def __init__(self, path: str | Path, reason: str, hint: str = ""):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}" + (f" ({hint})" if hint else ""))


SILENT_PEAK = 10 ** (-60 / 20)  # -60 dBFS: a segment whose loudest sample is below this is silence


@dataclass
class Clip:
    """video: (T, 3, S, S) float (S: frame_size), or None if not requested.
    frames: (T, H, W, 3) uint8 RGB as decoded and scaled down (decode_size; for face crops), or None if not requested.
    audio: (1, M, F) float log-mel, or None if not requested; has_audio is False without an audio stream
    and where the segment is silence (peak below SILENT_PEAK).
    audio_frames: how many of the F spectrogram frames come from real audio (the rest is padding)."""

    video: torch.Tensor | None
    audio: torch.Tensor | None
    has_audio: bool
    duration_s: float
    frames: np.ndarray | None = None
    audio_frames: int = 0


def open_media(path: str | Path) -> av.container.InputContainer:
    """`path` opened for reading as one audio or video file in one of READ_FORMATS: the only way
    media is opened here. MediaError naming the file for any other format (a playlist, a list of
    files, an image, ...), before anything but its first bytes is read."""
    try:
        # an absolute path always means the file protocol: "concat:a|b" or "http:x" names a file
        return av.open(os.path.abspath(path), metadata_errors="ignore", container_options=OPEN_OPTIONS)
    except av.ArgumentError:  # FFmpeg's answer to a demuxer off the list: EINVAL
        raise MediaError(path, "a playlist or a format that is not read", NOT_READ_HINT) from None


def load_clip(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    *,
    modalities: tuple[str, ...] = MEDIA_MODALITIES,
    settings: ProcessorConfig = DEFAULT,
) -> Clip:
    """Read the inputs of `modalities` ("video", "audio"; "frames": the video's sampled frames as
    decoded; "whisper": Whisper's log-mel as the audio, see AUDIO_INPUTS) for [start, end] seconds
    of `path`, preprocessed as `settings` say.

    Raises MediaError naming the file when it is missing, unreadable, or lacks a requested video
    stream. A missing audio stream is not an error: audio is silence and has_audio is False.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found", "check the path, relative to the CSV that lists it")
    if start is not None and end is not None and end <= start:
        raise MediaError(path, f"empty time range: end {end} <= start {start}")
    try:
        with open_media(path) as container:
            duration_s = container_duration(container)
            if duration_s > 0 and ((start is not None and start >= duration_s) or (end is not None and end <= 0)):
                # else the video would give its last frame and the audio silence: a wrong prediction, not a skip
                raise MediaError(path, "time range outside the file",
                                 f"[{start}, {end}] s; the file is {duration_s:.2f} s long: check the row's start and end")
            video = audio = frames = None
            audio_frames = 0
            has_audio = bool(container.streams.audio)
            if "video" in modalities or "frames" in modalities:
                if not container.streams.video:
                    raise MediaError(path, "no video stream", "use a video file, or leave out the video modality")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads: the same frames, decoded on every core
                size = decode_size(path, stream.codec_context.width, stream.codec_context.height, settings, modalities)
                frames = read_frames(container, stream, start, end, settings.num_frames, path, size)
                video = transform_frames(frames, settings) if "video" in modalities else None
            if audio_input := next((m for m in modalities if m in AUDIO_INPUTS), None):
                samples = read_audio(container, start, end, settings) if has_audio else np.zeros(0, np.float32)
                # silence counts as no audio: a voice expert abstains rather than read a muted track
                has_audio = samples.size > 0 and float(np.abs(samples).max()) > SILENT_PEAK
                audio, audio_frames = AUDIO_INPUTS[audio_input].compute(samples, settings)
    except av.FFmpegError as err:
        raise MediaError(path, "not a readable media file", f"truncated, corrupt, or not audio/video: {err}") from None
    return Clip(video=video, audio=audio, has_audio=has_audio, duration_s=duration_s,
                frames=frames if "frames" in modalities else None, audio_frames=audio_frames)


@dataclass
class MediaInfo:
    duration_s: float
    has_video: bool
    has_audio: bool
    width: int = 0  # of the first video stream's frames, from the header (0: none, or not known)
    height: int = 0


def probe(path: str | Path) -> MediaInfo:
    """Duration and streams of a media file, from its header; MediaError if it is not one."""
    path = Path(path)
    if path.is_dir():
        raise MediaError(path, "a folder, not a media file", "name a video file")
    if not path.is_file():
        raise MediaError(path, "file not found", "check the path")
    try:
        with open_media(path) as container:
            video = container.streams.video[0].codec_context if container.streams.video else None
            return MediaInfo(container_duration(container), video is not None, bool(container.streams.audio),
                             video.width if video else 0, video.height if video else 0)
    except av.FFmpegError as err:
        raise MediaError(path, "not a readable media file", f"truncated, corrupt, or not audio/video: {err}") from None


def decode_size(path: Path, width: int, height: int, settings: ProcessorConfig,
                modalities: tuple[str, ...]) -> tuple[int, int] | None:
    """(width, height) that FFmpeg's scaler turns each decoded frame into: the smallest, keeping the
    aspect ratio, that still gives each reader all it uses (R3D-18's transforms resize to
    `settings.frame_resize`; face crops want FACE_FRAME_LONGEST on the long side); None when the
    frames are no larger. MediaError for frames above MAX_FRAME_PIXELS, before any is decoded."""
    check_frame_size(path, width, height)
    if width <= 0 or height <= 0:
        return None  # not known from the header: decoded as they come
    scale = 0.0
    if "video" in modalities:
        resize_h, resize_w = settings.frame_resize
        scale = max(scale, resize_h / height, resize_w / width)
    if "frames" in modalities:
        scale = max(scale, max(FACE_FRAME_LONGEST, settings.face_detect_size) / max(width, height))
    if not 0.0 < scale < 1.0:  # no frames read, or none larger than needed
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_frame_size(path: str | Path, width: int, height: int) -> None:
    """MediaError naming the file when its frames are larger than MAX_FRAME_PIXELS."""
    if width * height > MAX_FRAME_PIXELS:
        raise MediaError(path, f"frames of {width}x{height} pixels, more than the 7680x4320 (8K) emosent decodes",
                         "scale the video down first, e.g. ffmpeg -i IN -vf scale=-2:1080 OUT.mp4")


def rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, scaled by FFmpeg (area averaging) to `size` (W, H)."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")


def container_duration(container: av.container.InputContainer) -> float:
    if container.duration is not None:
        return container.duration / av.time_base
    durations = [float(s.duration * s.time_base) for s in container.streams if s.duration is not None]
    return max(durations, default=0.0)


def read_frames(container, stream, start: float | None, end: float | None, n: int, path: Path,
                size: tuple[int, int] | None = None) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB frames at n uniform positions over [start, end], scaled to `size`
    (W, H; None: as decoded); short clips repeat frames."""
    index = frame_index(path)  # (pts, is_keyframe) in presentation order
    times = np.array([p for p, _ in index], dtype=np.float64) * float(stream.time_base)
    lo = -np.inf if start is None else start
    hi = np.inf if end is None else end
    in_range = np.flatnonzero((times >= lo) & (times < hi))
    if in_range.size == 0 and len(index) and start is not None:
        # a window shorter than one frame interval: the frame on screen at `start`
        in_range = np.flatnonzero(times <= start)[-1:]
    if in_range.size == 0:
        raise MediaError(path, "no video frames", "a 0-second clip, or a time range outside the video")
    picks = in_range[pick_frames([index[i][1] for i in in_range], n)]
    wanted_pts = {index[i][0] for i in picks}
    if container.format.name in LINEAR_FORMATS:
        decoded = plain_frames(path, wanted_pts, size)
    else:
        decoded = decode_pts(container, stream, index, wanted_pts, path, size)
    return np.stack([decoded[index[i][0]] for i in picks])


def pick_frames(is_keyframe: list[bool], n: int) -> np.ndarray:
    """n frame positions, one per equal bin of the frames (stratified, as in temporal segment
    sampling), chosen to decode as few frames as possible, then to lie near the bins' centres:

    * a bin holding a keyframe takes it (the one nearest its centre): one decoded frame;
    * a bin without one takes its centre frame, which costs nothing extra when a later pick of the
      same group of pictures (GOP) is decoded anyway;
    * except the GOP's last pick (the next bin holds a keyframe, or it is the last bin): decoding
      runs from the keyframe up to it, so it takes its bin's first frame, half a bin less.

    Spacing stays uniform up to one bin. On long GOPs (x264's default is 10 s) the last rule saves
    much of the decoding (754 frames instead of 1034 for a 60 s clip at 25 fps: tests/test_media.py); since encoders also place keyframes at scene cuts, picks
    lean towards the first frame after a cut. Fewer frames than n: repeats."""
    size = len(is_keyframe)
    centres = ((np.arange(n) + 0.5) * size / n).astype(int)
    if size < n:
        return centres
    edges = (np.arange(n + 1) * size / n).astype(int)  # bin k holds frames edges[k] .. edges[k+1]-1
    keyframes = np.flatnonzero(is_keyframe)
    holds = [keyframes[(keyframes >= edges[k]) & (keyframes < edges[k + 1])] for k in range(n)]
    picks = centres.copy()
    for k in range(n):
        if holds[k].size:
            picks[k] = holds[k][np.abs(holds[k] - centres[k]).argmin()]
        elif k == n - 1 or holds[k + 1].size:
            picks[k] = edges[k]
    return picks


def frame_index(path: Path) -> tuple[tuple[int, bool], ...]:
    """Every frame's (pts, is_keyframe) in the first video stream, sorted by pts, from the packets
    alone (no decoding). Kept for the last few files (see demux_index)."""
    stat = path.stat()
    return demux_index(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=INDEX_CACHE_FILES)
def demux_index(path: str, size: int, mtime_ns: int) -> tuple[tuple[int, bool], ...]:
    """frame_index, cached by path, size and mtime (a rewritten file is demuxed again): `analyze`
    reads many segments of one video, and demuxing the whole file for each would make it
    quadratic in the video's length."""
    with open_media(path) as container:
        stream = container.streams.video[0]
        return tuple(sorted((p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size))


def decode_pts(container, stream, index: tuple[tuple[int, bool], ...], wanted: set[int], path: Path,
               size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """Decode just the groups of pictures that hold `wanted` frames: seek to each one's keyframe,
    decode up to its last wanted frame. Groups are independent, so with several of them each core
    decodes its share on a decoder of its own (opened on the same file); the frames are the same
    as one decoder's, whose frame threads keep the cores less busy (bench/decode.py). Frames that
    seeking does not reach come from a plain decode of the file from its start (plain_frames)."""
    keyframes = np.array([pts for pts, key in index if key] or [index[0][0]])
    groups = gop_groups(keyframes, wanted)
    shares = balanced_shares(groups, min(len(groups), usable_cores()))
    frames: dict[int, np.ndarray] = {}
    if len(shares) == 1:
        frames.update(decode_groups(container, stream, shares[0], wanted, keyframes, size))
    else:
        stream.thread_type = "NONE"  # one core per decoder: threads within would only contend
        with ThreadPoolExecutor(len(shares) - 1) as pool:  # PyAV releases the GIL while decoding
            others = [pool.submit(decode_share, path, share, wanted, keyframes, size) for share in shares[1:]]
            frames.update(decode_groups(container, stream, shares[0], wanted, keyframes, size))
            for other in others:
                frames.update(other.result())
    missing = wanted - frames.keys()
    if missing:  # a group no seek reaches from its keyframe, or packets that decode to other timestamps
        frames.update(plain_frames(path, missing, size))
    return frames


def decode_groups(container, stream, groups: list[tuple[int, list[int]]], wanted: set[int],
                  keyframes: np.ndarray, size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """The wanted frames of `groups` ((keyframe pts, its wanted pts ascending), in file order). A
    seek that lands past a group's keyframe is tried again from the keyframe before it; a group
    that neither reaches is left out."""
    frames: dict[int, np.ndarray] = {}
    for key, group in groups:
        for target in (key, *keyframes[keyframes < key][-1:]):
            container.seek(int(target), stream=stream)
            decoded = decode_group(container, stream, key, group[-1], wanted, size)
            if decoded is not None:
                frames.update(decoded)
                break
    stream.codec_context.skip_frame = "DEFAULT"
    return frames


def decode_group(container, stream, key: int, last: int, wanted: set[int],
                 size: tuple[int, int] | None = None) -> dict[int, np.ndarray] | None:
    """The wanted frames from keyframe `key` up to pts `last`, demuxed from where the last seek put
    the file; None when that is past the keyframe. An MPEG transport stream seeks by decoding
    timestamps, so a seek to a keyframe's presentation timestamp can land on the packet after it,
    and what follows cannot be decoded without it."""
    codec = stream.codec_context
    frames: dict[int, np.ndarray] = {}
    reached = False
    for packet in container.demux(stream):
        if not reached and packet.pts is not None:
            if packet.pts > key:
                return None
            reached = packet.pts == key
        # An unwanted non-reference frame (a B-frame no other frame is predicted from) is not
        # decoded: the wanted frames come out the same. FFmpeg reads this per packet, threads too.
        codec.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        done = False
        for frame in packet.decode():
            if frame.pts in wanted and frame.pts not in frames:
                frames[frame.pts] = rgb(frame, size)
            done = done or (frame.pts is not None and frame.pts >= last)
        if done:
            break
    return frames


def decode_share(path: Path, groups: list[tuple[int, list[int]]], wanted: set[int], keyframes: np.ndarray,
                 size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    with open_media(path) as container:
        stream = container.streams.video[0]
        return decode_groups(container, stream, groups, wanted, keyframes, size)


def balanced_shares(groups: dict[int, list[int]], n: int) -> list[list[tuple[int, list[int]]]]:
    """`groups` split into n shares of about equal decoding, largest first onto the lightest share;
    each share in file order. A group's decoding is the span from its keyframe to its last wanted
    frame, in timestamps (frames, at a constant frame rate): no look-up in the frame index, which
    this would otherwise walk for every segment `analyze` reads."""
    if n <= 1:
        return [sorted(groups.items())]
    cost = {key: group[-1] - key + 1 for key, group in groups.items()}
    shares: list[list[tuple[int, list[int]]]] = [[] for _ in range(n)]
    load = [0] * len(shares)
    for key in sorted(groups, key=lambda k: -cost[k]):
        lightest = load.index(min(load))
        shares[lightest].append((key, groups[key]))
        load[lightest] += cost[key]
    return [sorted(share) for share in shares if share]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gop_groups(keyframes: np.ndarray, positions) -> dict[int, list[int]]:
    """`positions` (timestamps or frame numbers, as `keyframes` are) grouped under the keyframe
    that starts their group of pictures: the last one at or before each (the first keyframe for
    positions before it), ascending within a group."""
    groups: dict[int, list[int]] = {}
    for position in sorted(positions):
        key = int(keyframes[max(np.searchsorted(keyframes, position, side="right") - 1, 0)])
        groups.setdefault(key, []).append(position)
    return groups


def plain_frames(path: Path, wanted: set[int], size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """For each wanted pts, the decoded frame nearest to it (the earlier one on a tie), as a plain
    decoding loop gives them: the file opened afresh and decoded from its start without seeking,
    up to the last wanted frame, keeping only the best frame so far for each (memory for
    len(wanted) frames, not for the whole stream)."""
    last = max(wanted)
    best: dict[int, tuple[int, np.ndarray]] = {}  # wanted pts -> (distance, frame)
    with open_media(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            closer = [w for w in wanted if w not in best or abs(frame.pts - w) < best[w][0]]
            if closer:
                picture = rgb(frame, size)
                best.update({w: (abs(frame.pts - w), picture) for w in closer})
            if frame.pts >= last:  # frames come in presentation order: later ones are farther
                break
    if not best:
        raise MediaError(path, "not a readable media file", "no video frame decodes")
    return {w: picture for w, (_, picture) in best.items()}


@functools.lru_cache(maxsize=8)
def video_transforms(source: str, size: int, resize: tuple[int, int]):
    """The named torchvision weights' own video transforms (resize, centre crop, mean/std), at
    another crop size when asked: never re-typed here."""
    return video_transform_weights(source).transforms(crop_size=(size, size), resize_size=resize)


def transform_frames(frames: np.ndarray, settings: ProcessorConfig = DEFAULT) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, S, S) float, with the video weights' own transforms."""
    transforms = video_transforms(settings.frame_transforms, settings.frame_size, settings.frame_resize)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)
    return transforms(video).transpose(0, 1).contiguous()  # the transform gives (3, T, S, S)


def read_audio(container, start: float | None, end: float | None, settings: ProcessorConfig = DEFAULT) -> np.ndarray:
    """Mono float32 samples at the processor's rate for [start, min(end, start + window)]; audio
    after the window is never used, so it is not decoded."""
    rate, window = settings.sample_rate_hz, settings.mel_frames * settings.hop_length / settings.sample_rate_hz
    start = start or 0.0
    stop = start + window if end is None else min(end, start + window)
    if container.format.name in LINEAR_FORMATS:
        with open_media(container.name) as fresh:  # from its start, unread: no seek
            return audio_window(fresh, start, stop, rate)
    stream = container.streams.audio[0]
    container.seek(int(max(0.0, start - AUDIO_PREROLL_S) / float(stream.time_base)), stream=stream)
    return audio_window(container, start, stop, rate)


def audio_window(container, start: float, stop: float, rate: int) -> np.ndarray:
    """The samples of [start, stop) seconds, decoded from where the container is (at or before `start`)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks, first_time = [], None
    for frame in container.decode(container.streams.audio[0]):
        if frame.time is not None and frame.time >= stop:
            break
        if first_time is None:
            first_time = frame.time or 0.0
        chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
    chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
    if not chunks:
        return np.zeros(0, np.float32)
    samples = np.concatenate(chunks)
    skip = max(0, round((start - (first_time or 0.0)) * rate))  # decoding starts before `start`
    return samples[skip : skip + round((stop - start) * rate)]


def log_mel(samples: np.ndarray, settings: ProcessorConfig = DEFAULT) -> torch.Tensor:
    """(N,) float32 at the processor's rate -> (1, M, F) log-mel, zero mean and unit variance per clip.

    Log, because mel power spans many orders of magnitude: raw power (the tutorial's) lets a few
    loud bins dominate the convolutions, while dB follows loudness as heard. Per-clip
    normalisation removes the recording's gain. No audio gives zeros (the normalised mean).
    """
    n_mels, width = settings.n_mels, settings.mel_frames
    if samples.size == 0:
        return torch.zeros(1, n_mels, width)
    power = librosa.feature.melspectrogram(y=samples, sr=settings.sample_rate_hz, n_fft=settings.n_fft,
                                           hop_length=settings.hop_length, n_mels=n_mels)
    mel = librosa.power_to_db(power, ref=np.max, top_db=settings.top_db)  # (M, F)
    mel = (mel - mel.mean()) / max(float(mel.std()), 1e-6)
    mel = mel[:, :width]
    mel = np.pad(mel, ((0, 0), (0, width - mel.shape[1])))
    return torch.from_numpy(mel.astype(np.float32)).unsqueeze(0)


def mel_length(samples: np.ndarray, settings: ProcessorConfig = DEFAULT) -> int:
    """How many of `log_mel`'s F frames hold real audio: librosa's centred frames, 1 + N // hop,
    at most F; 0 for no audio."""
    if samples.size == 0:
        return 0
    return min(settings.mel_frames, 1 + samples.size // settings.hop_length)


WHISPER_HOP = 160  # Whisper's log-mel: 80 bands every 10 ms at 16 kHz (its feature extractor's fixed settings)
WHISPER_MELS = 80
WHISPER_RATE_HZ = 16_000


@functools.lru_cache(maxsize=1)
def whisper_features():
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=WHISPER_MELS)


def whisper_frames(settings: ProcessorConfig) -> int:
    """F for the whisper-base audio encoder: the audio window in Whisper's 10 ms frames (960 for 9.6 s)."""
    return round(settings.audio_window_s * WHISPER_RATE_HZ / WHISPER_HOP)


def whisper_mel(samples: np.ndarray, settings: ProcessorConfig = DEFAULT) -> tuple[torch.Tensor, int]:
    """(N,) float32 at 16 kHz -> Whisper's own log-mel (1, 80, F), zero-padded to the window, and
    how many frames hold real audio (faster-whisper's feature extractor: no settings of ours)."""
    width = whisper_frames(settings)
    out = torch.zeros(1, WHISPER_MELS, width)
    real = min(width, samples.size // WHISPER_HOP)
    if real:
        mel = whisper_features()(samples[: real * WHISPER_HOP])  # (80, frames)
        out[0, :, :real] = torch.from_numpy(np.ascontiguousarray(mel[:, :real]))
    return out, real


@dataclass(frozen=True)
class AudioInput:
    """One kind of audio input an encoder reads (its registry entry's `inputs`): samples at the
    settings' rate -> (1, M, F) and how many of the F frames hold real audio; its (M, F); the
    sample rate it needs, where fixed."""

    compute: Callable[[np.ndarray, ProcessorConfig], tuple[torch.Tensor, int]]
    shape: Callable[[ProcessorConfig], tuple[int, int]]
    sample_rate_hz: int | None = None


AUDIO_INPUTS = {
    "audio": AudioInput(lambda samples, settings: (log_mel(samples, settings), mel_length(samples, settings)),
                        lambda settings: (settings.n_mels, settings.mel_frames)),
    "whisper": AudioInput(whisper_mel, lambda settings: (WHISPER_MELS, whisper_frames(settings)), WHISPER_RATE_HZ),
}
