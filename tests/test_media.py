"""load_clip on real files it must read, and on the bad ones it must refuse clearly."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import solid_frames, tone
from emosent.data import MediaError, load_clip
from emosent.data.media import DEFAULT, pick_frames, read_frames, video_transforms

VIDEO_SHAPE = (DEFAULT.num_frames, 3, DEFAULT.frame_size, DEFAULT.frame_size)
AUDIO_SHAPE = (1, DEFAULT.n_mels, DEFAULT.mel_frames)
TRANSFORMS = video_transforms(DEFAULT.frame_transforms, DEFAULT.frame_size, DEFAULT.frame_resize)
MEAN = torch.tensor(TRANSFORMS.mean).view(1, 3, 1, 1)
STD = torch.tensor(TRANSFORMS.std).view(1, 3, 1, 1)


def grey_levels(video: torch.Tensor) -> list[int]:
    """Undo the normalisation and read back each frame's grey level (0..255)."""
    pixels = (video * STD + MEAN) * 255  # (T, 3, h, w)
    return [round(float(v)) for v in pixels.mean(dim=(1, 2, 3))]


def test_normal_clip_gives_the_model_inputs(clips):
    clip = load_clip(clips["normal"])
    assert clip.video.shape == VIDEO_SHAPE and clip.video.dtype == torch.float32
    assert clip.audio.shape == AUDIO_SHAPE and clip.has_audio
    assert clip.duration_s == pytest.approx(2.0, abs=0.1)
    # normalised with the Kinetics statistics: roughly zero-centred, not 0..255 or 0..1
    assert -3 < float(clip.video.mean()) < 3 and float(clip.video.std()) < 3
    # per-clip normalised log-mel over the 2 s of sound (63 frames), zero-padded after
    assert abs(float(clip.audio[..., :60].mean())) < 0.2
    assert torch.all(clip.audio[..., 70:] == 0)


def frame_numbers(levels: list[int], first: int, count: int, n: int = 16) -> list[int]:
    """The source frame of each pick, from its grey level (8 * i) % 256, taking the candidate in
    the pick's own bin of the `count` frames from `first`; fails if no candidate lies in it."""
    edges = [first + int(k * count / n) for k in range(n + 1)]
    found = []
    for k, level in enumerate(levels):
        candidates = [i for i in range(edges[k], max(edges[k + 1], edges[k] + 1)) if abs((8 * i) % 256 - level) <= 3]
        assert candidates, f"pick {k} (grey {level}) is not a frame of its bin {edges[k]}..{edges[k + 1] - 1}"
        found.append(candidates[0])
    return found


def test_frames_are_sampled_uniformly_in_time(clips):
    # 50 frames, 16 bins of ~3 frames: one frame from each bin, in order
    frames = frame_numbers(grey_levels(load_clip(clips["normal"]).video), first=0, count=50)
    assert frames == sorted(frames) and frames[0] == 0 and frames[-1] >= 46


def test_time_window_reads_only_that_window(clips):
    # [1.0, 1.5) s at 25 fps holds the 13 source frames 25..37: fewer than 16, so centres repeat
    got = grey_levels(load_clip(clips["normal"], start=1.0, end=1.5).video)
    expected = [(8 * (25 + int((k + 0.5) * 13 / 16))) % 256 for k in range(16)]
    assert np.abs(np.array(got) - expected).max() <= 3, (got, expected)


@pytest.mark.parametrize("start, end", [(2.5, 3.5), (2.0, 2.5), (-1.0, 0.0)])
def test_a_time_range_outside_the_file_is_an_error_not_its_last_frame(clips, start, end):
    # the clip is 2 s long; a manifest row past its end must be a counted skip, not a prediction
    with pytest.raises(MediaError, match="time range outside the file") as err:
        load_clip(clips["normal"], start=start, end=end)
    assert err.value.reason == "time range outside the file" and "2.0" in str(err.value)
    assert load_clip(clips["normal"], start=1.9, end=2.5).video.shape == VIDEO_SHAPE  # overlapping the end: read


def test_segments_of_one_file_demux_it_once_until_it_changes(tmp_path):
    from emosent.data.media import demux_index
    from emosent.synthetic import write_clip

    path = write_clip(tmp_path / "talk.mp4", duration_s=1.0, width=160, height=120, frame_fn=solid_frames(160, 120))
    demux_index.cache_clear()
    first = grey_levels(load_clip(path, 0.0, 0.5, modalities=("video",)).video)
    second = grey_levels(load_clip(path, 0.5, 1.0, modalities=("video",)).video)
    assert (demux_index.cache_info().misses, demux_index.cache_info().hits) == (1, 1)
    # grey level 8 * frame number (lossy: +-3); frame 13 (0.52 s) is the first at or after 0.5 s
    assert abs(first[0] - 0) <= 3 and abs(second[0] - 8 * 13) <= 3, (first, second)
    # the same path rewritten, twice as long: its new frames are read, not the old index's
    write_clip(path, duration_s=2.0, width=160, height=120, frame_fn=solid_frames(160, 120))
    later = grey_levels(load_clip(path, 1.5, 2.0, modalities=("video",)).video)
    assert demux_index.cache_info().misses == 2 and abs(later[0] - (8 * 38) % 256) <= 3, later


def test_plain_frames_fallback_finds_the_closest_decoded_frame(tmp_path):
    # the fallback for frames seeking does not reach, or packets that decode to other timestamps
    from emosent.data.media import frame_index, plain_frames
    from emosent.synthetic import write_clip

    path = write_clip(tmp_path / "talk.mp4", duration_s=2.0, width=160, height=120, frame_fn=solid_frames(160, 120))
    pts = [p for p, _ in frame_index(path)]
    step = pts[1] - pts[0]
    wanted = {pts[10] + step // 3: 10, pts[30] - step // 3: 30, pts[-1] + 5 * step: len(pts) - 1}
    frames = plain_frames(path, set(wanted))
    assert frames.keys() == wanted.keys()
    for w, source in wanted.items():
        assert abs(float(frames[w].mean()) - (8 * source) % 256) <= 3, (source, float(frames[w].mean()))


def test_pick_frames_prefers_a_keyframe_inside_each_bin():
    keyframes = [i % 25 == 0 for i in range(1500)]  # a 60 s clip at 25 fps, a keyframe every second
    picks = pick_frames(keyframes, 16)
    assert all(keyframes[p] for p in picks)  # every bin of 93.75 frames holds a keyframe
    assert all(int(k * 1500 / 16) <= p < int((k + 1) * 1500 / 16) for k, p in enumerate(picks))
    only_first = [i == 0 for i in range(48)]  # one GOP: centres, but the last pick at its bin's start
    assert pick_frames(only_first, 16).tolist() == [0] + [int((k + 0.5) * 3) for k in range(1, 15)] + [45]
    assert pick_frames([True] * 4, 16).tolist() == [int((k + 0.5) / 4) for k in range(16)]  # repeats


def test_pick_frames_on_long_gops_decode_less_than_centres():
    keyframes = [i % 250 == 0 for i in range(1500)]  # x264's default: a keyframe every 10 s at 25 fps
    picks = pick_frames(keyframes, 16)
    edges = [int(k * 1500 / 16) for k in range(17)]
    assert all(edges[k] <= p < edges[k + 1] for k, p in enumerate(picks))  # still one pick per bin
    assert [p for p in picks if keyframes[p]] == [0, 250, 500, 750, 1000, 1250]

    def decoded(chosen):  # each GOP from its keyframe up to its last pick
        return sum(max(p for p in chosen if p // 250 == g) - 250 * g + 1 for g in {p // 250 for p in chosen})

    centres = [k if keyframes[k] else c for k, c in zip(picks, (np.arange(16) + 0.5) * 1500 // 16)]
    assert decoded(picks) == 754 and decoded([int(c) for c in centres]) == 1034
    # the GOP's last pick, in a bin before a keyframe's bin, is its bin's first frame; others are centres
    assert picks[1] == edges[1] and picks[4] == edges[4] and picks[3] == int(3.5 * 1500 / 16)


def test_rgb_channel_order(tmp_path):
    from emosent.synthetic import write_clip

    red = lambda i, t: np.broadcast_to(np.array([220, 20, 20], np.uint8), (120, 160, 3)).copy()
    path = write_clip(tmp_path / "red.mp4", duration_s=0.5, fps=10, width=160, height=120, frame_fn=red)
    pixels = (load_clip(path, modalities=("video",)).video * STD + MEAN) * 255
    r, g, b = (float(pixels[:, c].mean()) for c in range(3))
    assert r > 180 and g < 60 and b < 60


def test_fewer_than_16_frames_repeats_frames(clips):
    clip = load_clip(clips["short"])  # 5 frames
    levels = grey_levels(clip.video)
    assert clip.video.shape == VIDEO_SHAPE
    assert len(set(levels)) == 5 and levels == sorted(levels)


def test_clip_without_audio_gives_silence_and_says_so(clips):
    clip = load_clip(clips["no_audio"])
    assert clip.video.shape == VIDEO_SHAPE
    assert not clip.has_audio and clip.audio.shape == AUDIO_SHAPE and torch.count_nonzero(clip.audio) == 0


def test_clip_without_video_stream(clips):
    with pytest.raises(MediaError, match="no_video.mp4: no video stream"):
        load_clip(clips["no_video"])
    audio_only = load_clip(clips["no_video"], modalities=("audio",))
    assert audio_only.audio.shape == AUDIO_SHAPE and audio_only.has_audio and audio_only.video is None


def test_zero_second_clip(clips):
    with pytest.raises(MediaError, match="zero.mp4: no video frames") as err:
        load_clip(clips["zero"])
    assert err.value.reason == "no video frames"


def test_five_minute_clip_reads_only_what_it_needs(clips):
    clip = load_clip(clips["long"])
    assert clip.video.shape == VIDEO_SHAPE and clip.audio.shape == AUDIO_SHAPE
    assert clip.duration_s == pytest.approx(300, abs=1)
    # the audio is truncated to the first 9.6 s: every one of the 300 mel frames holds sound
    assert torch.count_nonzero(clip.audio[0, :, -1]) > 0


def test_full_hd_clip_is_resized(clips):
    assert load_clip(clips["hd"]).video.shape == VIDEO_SHAPE


@pytest.mark.parametrize("name, reason", [
    ("truncated", "not a readable media file"),
    ("text", "not a readable media file"),
    ("missing", "file not found"),
])
def test_unreadable_files_give_a_clear_error_naming_the_file(clips, name, reason):
    with pytest.raises(MediaError) as err:
        load_clip(clips[name])
    assert err.value.reason == reason and str(clips[name]) in str(err.value)


def test_nothing_is_written_next_to_the_input(clips):
    folder = clips["normal"].parent
    before = sorted(p.name for p in folder.iterdir())
    load_clip(clips["normal"])
    load_clip(clips["no_audio"])
    assert sorted(p.name for p in folder.iterdir()) == before


def test_audio_files_are_read_by_pyav(tmp_path):
    from emosent.synthetic import write_clip

    # an audio-only mp4 here; FLAC and WAV are covered by the RAVDESS test in test_manifest.py
    path = write_clip(tmp_path / "speech.m4a.mp4", duration_s=3.0, audio_fn=lambda t: (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    clip = load_clip(path, modalities=("audio",))
    assert clip.has_audio and clip.audio.shape == AUDIO_SHAPE
    # 3 s = 94 mel frames of sound, then padding
    assert torch.count_nonzero(clip.audio[0, :, 80]) > 0 and torch.count_nonzero(clip.audio[0, :, 100]) == 0


@pytest.mark.parametrize("cores", [1, 3])  # one threaded decoder; the GOPs shared out over three decoders
def test_seek_decoding_matches_decoding_every_frame(tmp_path, monkeypatch, cores):
    from emosent.data import media
    from emosent.synthetic import write_clip

    monkeypatch.setattr(media, "usable_cores", lambda: cores)

    def no_fallback(*args):
        raise AssertionError("a wanted frame was not decoded where seeking put it (skipped?)")

    monkeypatch.setattr(media, "plain_frames", no_fallback)

    # x264's default preset writes B-frames (unwanted ones are skipped); a short GOP, so that
    # seeking, and decoding GOPs on several decoders, are exercised
    path = write_clip(tmp_path / "gop.mp4", duration_s=4.0, fps=25, width=160, height=120,
                      frame_fn=lambda i, t: np.full((120, 160, 3), (8 * i) % 256, np.uint8), gop=12, preset="medium")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        assert sum(1 for _ in c.decode(stream)) < 100  # some of the 100 frames are non-reference B-frames
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"  # as load_clip decodes
        sought = read_frames(c, c.streams.video[0], None, None, 16, path)
    with av.open(str(path)) as c:
        decoded = [(f.to_ndarray(format="rgb24"), f.key_frame) for f in c.decode(video=0)]
    picks = pick_frames([key for _, key in decoded], 16)  # keyframe flags from the decoder, not the demuxer
    assert sum(decoded[p][1] for p in picks) >= 4 and sum(not decoded[p][1] for p in picks) >= 4  # both kinds of pick
    assert np.array_equal(sought, np.stack([decoded[p][0] for p in picks]))


# ---------------------------------------------------------------------------------------------
# What is read: one audio or video file in a container of READ_FORMATS, never what a list names

def write_media(path, muxer: str, video_codec: str | None, audio_codec: str | None, seconds: float = 1.0,
                fps: int = 25, gop: int = 6):
    """A file written by PyAV's own muxer and encoders: frame i a flat grey (8 * i) % 256 with a
    small moving patch of noise (which makes P- and B-frames), a chirp for sound."""
    from fractions import Fraction

    width, height = 160, 120
    noise = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    with av.open(str(path), "w", format=muxer) as out:
        video = audio = None
        if video_codec:
            video = out.add_stream(video_codec, rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.codec_context.gop_size = gop
            if video_codec in ("mpeg1video", "mpeg2video", "mpeg4"):
                video.codec_context.max_b_frames = 2
            if video_codec == "libvpx":
                video.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        if audio_codec:
            rate = 48_000 if audio_codec == "libopus" else 44_100
            audio = out.add_stream(audio_codec, rate=rate, layout="mono")
        out.start_encoding()
        for i in range(round(seconds * fps) if video else 0):
            rgb = np.full((height, width, 3), (8 * i) % 256, np.uint8)
            rgb[40:64, 4 * i % 130:4 * i % 130 + 24] = noise
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        if video:
            out.mux(video.encode(None))
        if audio:
            fmt, size = audio.codec_context.format.name, audio.codec_context.frame_size or 1024
            dtype = {"s16": np.int16, "s32": np.int32, "flt": np.float32}[fmt.rstrip("p")]
            t = np.arange(round(seconds * rate)) / rate
            pcm = 0.3 * np.sin(2 * np.pi * (200 * t + 150 * t * t)) * (np.iinfo(dtype).max if dtype != np.float32 else 1)
            for k in range(0, len(pcm) - size + 1, size):
                frame = av.AudioFrame.from_ndarray(pcm[None, k:k + size].astype(dtype), format=fmt, layout="mono")
                frame.sample_rate, frame.pts = rate, k
                out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    return path


CONTAINERS = [  # file, PyAV's muxer, video and audio encoders, the demuxer FFmpeg reads it with
    ("clip.mp4", "mp4", "libx264", "aac", "mov,mp4,m4a,3gp,3g2,mj2"),
    ("clip.mkv", "matroska", "mpeg4", "libmp3lame", "matroska,webm"),
    ("clip.webm", "webm", "libvpx", "libopus", "matroska,webm"),
    ("clip.avi", "avi", "mpeg4", "mp2", "avi"),
    ("clip.flv", "flv", "flv", "libmp3lame", "flv"),
    ("clip.mpg", "mpeg", "mpeg1video", "mp2", "mpeg"),  # a program stream, as GRID's clips
    ("clip.ts", "mpegts", "mpeg2video", "mp2", "mpegts"),
    ("speech.wav", "wav", None, "pcm_s16le", "wav"),
    ("speech.mp3", "mp3", None, "libmp3lame", "mp3"),
    ("speech.ogg", "ogg", None, "libopus", "ogg"),
    ("speech.flac", "flac", None, "flac", "flac"),
    ("speech.aac", "adts", None, "aac", "aac"),
]


@pytest.mark.parametrize("name, muxer, video_codec, audio_codec, demuxer", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_container_read_gives_what_a_plain_decode_gives(tmp_path, monkeypatch, name, muxer, video_codec,
                                                              audio_codec, demuxer):
    from emosent.data import media

    monkeypatch.setattr(media, "usable_cores", lambda: 3)  # GOPs shared out over decoders, as on a server
    path = write_media(tmp_path / name, muxer, video_codec, audio_codec)
    with media.open_media(path) as container:
        assert container.format.name == demuxer and demuxer in media.READ_FORMATS
        if video_codec:
            time_base = float(container.streams.video[0].time_base)
            video_start = container.streams.video[0].start_time * time_base  # 0.5 s or so in a program stream
    info = media.probe(path)
    assert (info.has_video, info.has_audio) == (video_codec is not None, True)
    assert info.duration_s == pytest.approx(1.0, abs=0.1)
    if video_codec is None:
        clip = load_clip(path, modalities=("audio",))
        assert clip.has_audio and clip.audio_frames >= 30  # 1 s at a hop of 32 ms
        return
    with av.open(str(path)) as container:  # the plain loop: every frame, in order
        plain = {f.pts: f.to_ndarray(format="rgb24") for f in container.decode(video=0)}
    index = media.frame_index(path)
    times = np.array([pts for pts, _ in index]) * time_base
    for start, end in [(None, None), (video_start + 0.3, video_start + 0.9)]:
        clip = load_clip(path, start, end, modalities=("frames", "audio"))
        inside = np.flatnonzero((times >= (start or -np.inf)) & (times < (end or np.inf)))
        picks = inside[pick_frames([index[i][1] for i in inside], DEFAULT.num_frames)]
        assert np.array_equal(clip.frames, np.stack([plain[index[i][0]] for i in picks])), (name, start)
        assert clip.has_audio and clip.audio_frames >= (30 if start is None else 15)


def hls_playlist(path, entry: str):
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{entry}\n#EXT-X-ENDLIST\n")
    return path


@pytest.fixture(scope="module")
def lists(tmp_path_factory) -> dict[str, tuple]:
    """Files that have FFmpeg open other files, each naming a real mp4 elsewhere on the disk, as an
    upload could name a file of the server's: name -> (file, the demuxer FFmpeg alone reads it with)."""
    from PIL import Image

    from emosent.synthetic import write_clip

    folder = tmp_path_factory.mktemp("lists")
    (folder / "private").mkdir()
    private = write_clip(folder / "private" / "secret.mp4", duration_s=1.0, width=160, height=120,
                         frame_fn=solid_frames(160, 120), audio_fn=tone())
    uploads = folder / "uploads"
    uploads.mkdir()
    (folder / "list.ffconcat").write_text("ffconcat version 1.0\nfile 'private/secret.mp4'\n")  # no "..": safe mode
    Image.new("RGB", (32, 32), (200, 30, 30)).save(uploads / "frame.png")
    return {
        "m3u8 absolute": (hls_playlist(uploads / "abs.m3u8", str(private)), "hls"),
        "m3u8 relative": (hls_playlist(uploads / "rel.m3u8", "../private/secret.mp4"), "hls"),
        "ffconcat": (folder / "list.ffconcat", "concat"),
        "png": (uploads / "frame.png", "png_pipe"),
    }


@pytest.mark.parametrize("kind", ["m3u8 absolute", "m3u8 relative", "ffconcat", "png"])
def test_playlists_lists_and_images_are_refused_before_anything_is_read(lists, kind):
    from emosent.data import probe

    path, demuxer = lists[kind]
    with av.open(str(path)) as container:  # what FFmpeg alone does: the playlist's entry is read
        assert container.format.name == demuxer and (demuxer == "png_pipe" or container.streams.audio)
    for read in (probe, load_clip):
        with pytest.raises(MediaError) as err:
            read(path)
        assert err.value.reason == "a playlist or a format that is not read", err.value
        assert str(err.value).startswith(f"{path}: ") and "never the files a playlist" in str(err.value)


def test_analyze_refuses_a_playlist_before_loading_a_model(lists, tmp_path):
    from emosent.analyze import analyze

    srt = tmp_path / "talk.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,900\nhello\n")
    with pytest.raises(MediaError, match="a playlist or a format that is not read"):
        analyze(lists["m3u8 absolute"][0], model="no-such-model-folder", subtitles=srt)


def test_a_window_of_an_mpeg_program_stream_reads_its_sound(tmp_path):
    # GRID's clips (MPEG-1 and MP2 in a program stream): a seek landed inside an audio packet that
    # the decoder refused, and every segment of `analyze` was skipped as not a readable media file
    from emosent.data import media

    path = write_media(tmp_path / "talk.mpg", "mpeg", "mpeg1video", "mp2", seconds=2.0)
    with media.open_media(path) as container:
        whole = media.read_audio(container, None, None)
        stream = container.streams.audio[0]
        first = float(stream.start_time * stream.time_base)  # a program stream starts at 0.5 s or so
    with media.open_media(path) as container:
        window = media.read_audio(container, first + 0.5, first + 1.5)
    skip = round(0.5 * DEFAULT.sample_rate_hz)
    assert len(window) == DEFAULT.sample_rate_hz and np.array_equal(window, whole[skip:skip + len(window)])


def test_a_transport_stream_seeks_again_from_the_keyframe_before(tmp_path, monkeypatch):
    # it seeks by decoding timestamps, so a seek to a keyframe's presentation timestamp lands on the
    # packet after it; from the keyframe before, only the first group is left to a plain decode
    from emosent.data import media

    asked = []
    plain_frames = media.plain_frames
    monkeypatch.setattr(media, "plain_frames", lambda path, wanted, *size: asked.append(wanted) or plain_frames(path, wanted, *size))
    path = write_media(tmp_path / "talk.ts", "mpegts", "mpeg2video", None, seconds=2.0)
    load_clip(path, modalities=("frames",))
    keyframes = [pts for pts, key in media.frame_index(path) if key]
    assert len(keyframes) >= 8 and asked and all(pts < keyframes[1] for pts in set().union(*asked)), (keyframes, asked)


# ---------------------------------------------------------------------------------------------
# Frame size (issue 28: ten 7680x4320 frames took analyze past 9 GB): scaled down by FFmpeg as
# they are decoded, to what each reader uses; larger than 8K refused before decoding

@pytest.mark.parametrize("width, height, modalities, expected", [
    (160, 120, ("video",), None),  # smaller than R3D-18's 171x128: as decoded
    (1280, 720, ("video",), (228, 128)),  # covers 171x128, the aspect kept
    (720, 1280, ("video",), (171, 304)),  # portrait
    (7680, 4320, ("video",), (228, 128)),
    (1280, 720, ("frames",), (1024, 576)),  # faces: 1024 on the long side
    (640, 480, ("frames",), None),
    (7680, 4320, ("video", "frames"), (1024, 576)),  # both: the larger need
    (7680, 4320, ("audio",), None),
])
def test_decode_size_is_what_the_readers_use(width, height, modalities, expected):
    from emosent.data.media import decode_size

    assert decode_size(Path("v.mp4"), width, height, DEFAULT, modalities) == expected


def test_large_frames_are_scaled_as_decoded_and_more_than_8k_refused(tmp_path):
    from emosent.synthetic import write_clip

    big = write_clip(tmp_path / "big.mp4", duration_s=0.4, fps=10, width=2048, height=1152,
                     frame_fn=lambda i, t: np.full((1152, 2048, 3), 40 * i, np.uint8))
    clip = load_clip(big, modalities=("video", "frames"))
    assert clip.frames.shape == (16, 576, 1024, 3) and clip.video.shape == VIDEO_SHAPE
    greys = sorted(set(clip.frames[:, 300, 500, 0].tolist()))  # solid greys survive the scaler (YUV rounds them)
    assert np.allclose(greys, [0, 40, 80, 120], atol=3), greys
    huge = write_clip(tmp_path / "huge.mp4", duration_s=0.1, fps=10, width=7696, height=4320,
                      frame_fn=lambda i, t: np.zeros((4320, 7696, 3), np.uint8))
    with pytest.raises(MediaError, match=r"huge.mp4: frames of 7696x4320 pixels, more than the 7680x4320 \(8K\)"):
        load_clip(huge, modalities=("video",))
    assert load_clip(huge, modalities=("audio",)).video is None  # the refusal is about decoding frames
