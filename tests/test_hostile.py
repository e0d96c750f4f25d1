"""Hostile but realistic input: one clear line (exit 2) or a correct result; never a traceback,
never a user's file overwritten, never a dead end. Every case runs on real files made here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import run_cli
from emosent import EmotionSentimentModel, ModelConfig
from emosent.files import exclusive

TINY = ("--text-encoder", "tiny", "--video-weights", "none")
FAST = (*TINY, "--modalities", "text,audio", "--batch-size", "4", "--num-workers", "0")


def one_clear_line(result, *needles: str) -> None:
    """Exit status 2, no traceback, and one stderr line holding every needle."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert any(all(n in line for n in needles) for line in lines), (needles, result.stderr[-2000:])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none")).save_pretrained(
        tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def clip(sample_dir):
    return sorted((sample_dir / "output_repeated_splits_test").glob("*.mp4"))[0]


# ---------------------------------------------------------------------------------------------
# Options: checked by argparse before anything runs (in-process: these never get past parsing)

@pytest.mark.parametrize("args, needle", [
    (["train", "--data", "d", "--out", "o", "--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
    (["train", "--data", "d", "--out", "o", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["train", "--data", "d", "--out", "o", "--num-workers", "-2"], "argument --num-workers: must be at least 0"),
    (["train", "--data", "d", "--out", "o", "--lr-text", "0"], "argument --lr-text: must be more than 0"),
    (["train", "--data", "d", "--out", "o", "--lr-heads", "nan"], "argument --lr-heads: expected a finite number"),
    (["train", "--data", "d", "--out", "o", "--label-smoothing", "1"], "argument --label-smoothing: must be less than 1"),
    (["train", "--data", "d", "--out", "o", "--seed", "4294967296"], "argument --seed: must be less than 4294967296"),
    (["train", "--data", "d", "--out", "o", "--devices", "0"], "argument --devices: expected auto, a number of devices"),
    (["train", "--data", "d", "--out", "o", "--epochs", "2.5"], "argument --epochs: expected a whole number, got '2.5'"),
    (["extract", "--data", "d", "--shard-rows", "0"], "argument --shard-rows: must be at least 1"),
    (["analyze", "v.mp4", "--model", "m", "--subtitles", "s.srt", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["make-sample", "o", "--n-per-class", "0"], "argument --n-per-class: must be at least 1"),
    # memory grows with the batch (issue 28: --batch-size 1000 took predict to 20.5 GB): bounded
    (["predict", "--data", "d", "--out", "p.jsonl", "--batch-size", "1000"], "argument --batch-size: must be less than 65, got 1000"),
    (["analyze", "v.mp4", "--subtitles", "s.srt", "--batch-size", "65"], "argument --batch-size: must be less than 65"),
    (["serve", "--batch-size", "100"], "argument --batch-size: must be less than 65"),
    (["extract", "--data", "d", "--batch-size", "65"], "argument --batch-size: must be less than 65"),
])
def test_options_are_checked_before_any_work(args, needle, capsys):
    from emosent.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and needle in capsys.readouterr().err


def test_python_callers_get_the_same_checks(model_dir, clip, tmp_path):
    from emosent.analyze import analyze
    from emosent.config import TrainConfig

    with pytest.raises(ValueError, match="epochs must be at least 1"):
        TrainConfig(epochs=-1)
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        analyze(clip, model_dir, subtitles=tmp_path / "none.srt", batch_size=0)
    with pytest.raises(ValueError, match="--batch-size must be less than 65, got 1000"):
        analyze(clip, model_dir, subtitles=tmp_path / "none.srt", batch_size=1000)


# ---------------------------------------------------------------------------------------------
# analyze: outputs never replace inputs, and are checked before the work

def test_outputs_that_name_inputs_or_cannot_be_written_are_refused_first(model_dir, clip, tmp_path):
    subtitles = tmp_path / "talk.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,800\nhello\n")
    video = tmp_path / "talk.mp4"
    shutil.copy(clip, video)
    (tmp_path / "a folder").mkdir()
    before = {p: digest(p) for p in (video, subtitles, model_dir / "config.json", model_dir / "model.safetensors")}
    base = ["analyze", video, "--model", model_dir, "--subtitles", subtitles]
    cases = [
        (["--out", video], ("--out", "talk.mp4", "the video being read")),
        (["--out", subtitles], ("--out", "the subtitle file being read")),
        (["--out", tmp_path / "." / "talk.srt"], ("--out", "the subtitle file being read")),  # another spelling
        (["--plot", video], ("--plot", "the video being read")),
        (["--out", model_dir / "config.json"], ("--out", "the model folder being read")),
        (["--out", tmp_path / "r.json", "--plot", tmp_path / "r.json"], ("--plot and --out both name",)),
        (["--out", tmp_path / "missing" / "r.json"], ("--out", "does not exist; create it first")),
        (["--out", tmp_path / "a folder"], ("--out", "is a folder")),
        (["--plot", tmp_path / "timeline.xyz"], ("--plot", "cannot write a .xyz image")),
    ]
    for extra, needles in cases:
        one_clear_line(run_cli(*base, *extra), *needles)
    assert {p: digest(p) for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a folder", "talk.mp4", "talk.srt"]  # nothing else written


def test_results_follow_the_umask_and_progress_is_shown(model_dir, clip, tmp_path):
    subtitles = tmp_path / "s.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,500\nhello\n\n2\n00:00:00,500 --> 00:00:01,000\nbye\n")
    out, plot = tmp_path / "r.json", tmp_path / "t.png"
    result = run_cli("analyze", clip, "--model", model_dir, "--subtitles", subtitles, "--out", out, "--plot", plot, "--batch-size", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "analysing 2 segments" in result.stderr and "analysed 2/2 segments" in result.stderr
    mask = os.umask(0)
    os.umask(mask)
    for path in (out, plot, model_dir / "model.safetensors", model_dir / "config.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


# ---------------------------------------------------------------------------------------------
# Input files with the wrong types

@pytest.mark.parametrize("items, needle", [
    ('[{"start": NaN, "end": 1, "text": "a"}]', "item 0, start: Input should be a finite number"),
    ('[{"start": 0, "end": Infinity, "text": "a"}]', "item 0, end: Input should be a finite number"),
    ('[{"start": true, "end": 1, "text": "a"}]', "item 0, start: Input should be a valid number, got True"),
    ('[{"start": "0", "end": 1, "text": "a"}]', "item 0, start: Input should be a valid number"),
    ('[{"start": 0, "end": 1, "text": "ok"}, {"start": 1, "end": 2, "text": ["a", "b"]}]', "item 1, text: Input should be a valid string"),
    ('[{"start": -1, "end": 1, "text": "a"}]', "item 0, start: Input should be greater than or equal to 0"),
    ('[{"start": 0, "text": "a"}]', "item 0, end: Field required"),
    ('[{"start": 0, "end": 1, "text": null}]', "item 0, text: Input should be a valid string"),
    ('{"start": 0, "end": 1, "text": "a"}', "expected a JSON list"),
    ('[]', "the transcript is empty"),
    ('[1, 2]', "item 0: Input should be a valid dictionary"),
    ('[{"start": 0, "end": 1, "text": "a"', "not valid JSON"),
])
def test_transcripts_with_wrong_types_are_refused(items, needle, tmp_path):
    from emosent.segments import read_segments

    path = tmp_path / "t.json"
    path.write_text(items)
    with pytest.raises(ValueError) as err:
        read_segments(path)
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value) and "\n" not in str(err.value)


# Text files built to break a parser: one line naming the file, never an OverflowError or a
# RecursionError (the service's answer to the same files is in tests/test_serve.py)
HOSTILE_TEXT = [
    ("overflow.srt", "1\n99999999999:00:00,000 --> 99999999999:00:01,000\nhello\n", "a timestamp too large"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
]


@pytest.mark.parametrize("name, text, needle", HOSTILE_TEXT)
def test_hostile_subtitles_and_transcripts_are_one_line(name, text, needle, tmp_path):
    from emosent.segments import read_segments

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_segments(path)
    assert str(err.value).startswith(f"{path}: {needle}") and "\n" not in str(err.value)


def test_hostile_text_files_and_symlink_loops_on_the_command_line(model_dir, clip, tmp_path):
    for name, text, needle in HOSTILE_TEXT:
        (tmp_path / name).write_text(text)
        option = "--subtitles" if name.endswith(".srt") else "--transcript"
        one_clear_line(run_cli("analyze", clip, "--model", model_dir, option, tmp_path / name), f"{name}: {needle}")
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(tmp_path / "back.mp4")
    (tmp_path / "back.mp4").symlink_to(loop)
    one_clear_line(run_cli("analyze", loop, "--model", model_dir, "--transcript", tmp_path / "deep.json"), "loop.mp4: file not found")
    # train and evaluate: a row naming the loop is a clip that cannot be read, skipped and counted
    data = user_csv(tmp_path / "data", {"train": [(str(loop), "hello")], "dev": [(str(loop), "hello")],
                                        "test": [(str(loop), "hello"), (str(clip), "hi")]})
    one_clear_line(run_cli("train", "--data", data, "--out", tmp_path / "run", *FAST, "--cache-dir", tmp_path / "cache"),
                   "no usable clip in the train split", "loop.mp4")
    evaluated = run_cli("evaluate", "--model", model_dir, "--data", data, "--out", tmp_path / "eval", "--cache-dir", tmp_path / "cache")
    assert evaluated.returncode == 0 and "Traceback" not in evaluated.stderr, evaluated.stderr[-2000:]
    assert "skipped 1" in evaluated.stdout + evaluated.stderr, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
    predicted = run_cli("predict", "--data", data / "test.csv", "--out", tmp_path / "p.jsonl", "--model", model_dir, "--num-workers", "0")
    assert predicted.returncode == 0 and "Traceback" not in predicted.stderr, predicted.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["skip"] for r in rows] == ["file not found", None], rows


@pytest.mark.parametrize("start, end", [("nan", "1"), ("0", "inf"), ("-inf", "1"), ("0", "1e999")])
def test_manifest_times_must_be_finite(start, end, tmp_path):
    from emosent.data import read_manifest

    manifest = tmp_path / "rows.csv"
    manifest.write_text(f"path,text,start,end\na.mp4,fine,0,1\nb.mp4,hello,{start},{end}\n")
    with pytest.raises(ValueError) as err:
        read_manifest(manifest, None, labels=False)
    assert f"{manifest}:3: start/end must be a finite number of seconds" in str(err.value)


def test_a_manifest_with_nan_times_is_one_line_in_predict(model_dir, tmp_path):
    manifest = tmp_path / "rows.csv"
    manifest.write_text("path,text,start,end\na.mp4,hello,nan,1\n")
    one_clear_line(run_cli("predict", "--data", manifest, "--out", tmp_path / "p.jsonl", "--model", model_dir),
                   "rows.csv:2: start/end must be a finite number of seconds", "got 'nan'")


def test_a_nan_transcript_fails_on_the_command_line_and_writes_nothing(model_dir, clip, tmp_path):
    transcript = tmp_path / "t.json"
    transcript.write_text('[{"start": NaN, "end": 1, "text": "a"}]')
    one_clear_line(run_cli("analyze", clip, "--model", model_dir, "--transcript", transcript, "--out", tmp_path / "r.json"),
                   "t.json: item 0, start")
    assert not (tmp_path / "r.json").exists()


def test_subtitle_markup_is_not_text(tmp_path):
    from emosent.segments import read_segments

    vtt = tmp_path / "s.vtt"
    vtt.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n<v Bob>Tom &amp; Jerry &lt;3 <i>yes</i>\n")
    srt = tmp_path / "s.srt"
    srt.write_text('1\n00:00:00,000 --> 00:00:01,000\n<i>Tom</i> {\\an8}&amp; <font color="red">Jerry</font>, 3 < 4\n')
    assert read_segments(vtt)[0].text == "Tom & Jerry <3 yes"
    assert read_segments(srt)[0].text == "Tom & Jerry, 3 < 4"


# ---------------------------------------------------------------------------------------------
# Model folders and weight files

def broken_copies(model_dir, root):
    """(name, folder) pairs: copies of a good model folder, each broken in one way."""
    def copy(name, edit):
        folder = root / name
        shutil.copytree(model_dir, folder)
        edit(folder)
        return name, folder

    def edit_config(change):
        def apply(folder):
            meta = json.loads((folder / "config.json").read_text())
            change(meta["model_config"])
            (folder / "config.json").write_text(json.dumps(meta))
        return apply

    weights = (model_dir / "model.safetensors").read_bytes()
    return [
        copy("truncated", lambda f: (f / "model.safetensors").write_bytes(weights[: len(weights) // 2])),
        copy("unknown-modality", edit_config(lambda c: c.update(modalities=["text", "smell"]))),
        copy("negative-width", edit_config(lambda c: c.update(feature_dim=-4))),
        copy("boolean-width", edit_config(lambda c: c.update(fusion_dim=True))),
        copy("unknown-field", edit_config(lambda c: c.update(colour="blue"))),
        copy("other-width", edit_config(lambda c: c.update(fusion_dim=128))),
        copy("invalid-json", lambda f: (f / "config.json").write_text('{"model_config": {')),
        copy("no-tokenizer", lambda f: shutil.rmtree(f / "text_encoder")),
        copy("no-tokenizer-json", lambda f: (f / "text_encoder" / "tokenizer.json").unlink()),
        copy("no-tokenizer-config", lambda f: (f / "text_encoder" / "tokenizer_config.json").unlink()),
        copy("no-processor", lambda f: (f / "processor.json").unlink()),
        copy("no-weights", lambda f: (f / "model.safetensors").unlink()),
    ]


EXPECTED = {
    "truncated": "model.safetensors: not a readable safetensors file",
    "unknown-modality": "config.json: model_config: the top level: modalities must be a non-empty subset",
    "negative-width": "config.json: model_config: feature_dim: Input should be greater than 0, got -4",
    "boolean-width": "config.json: model_config: fusion_dim: Input should be a valid integer, got True",
    "unknown-field": "config.json: model_config: colour: unknown field",
    "other-width": "model.safetensors: its tensors do not match",
    "invalid-json": "config.json: not valid JSON",
    "no-tokenizer": "text_encoder not found: the model folder is incomplete",
    "no-weights": "model.safetensors not found: the model folder is incomplete",
    "no-tokenizer-json": "text_encoder/tokenizer.json not found: the model folder is incomplete",
    "no-tokenizer-config": "text_encoder/tokenizer_config.json not found: the model folder is incomplete",
    "no-processor": "processor.json not found: the model folder is incomplete",
}


def test_broken_model_folders_name_the_file(model_dir, clip, tmp_path):
    transcript = tmp_path / "t.json"
    transcript.write_text('[{"start": 0, "end": 1, "text": "hello"}]')
    for name, folder in broken_copies(model_dir, tmp_path):
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            EmotionSentimentModel.from_pretrained(folder)
        assert EXPECTED[name] in str(err.value) and str(folder) in str(err.value), (name, str(err.value))
    # and on the command line, one line and no traceback
    one_clear_line(run_cli("analyze", clip, "--model", tmp_path / "truncated", "--transcript", transcript),
                   "truncated/model.safetensors: not a readable safetensors file")
    one_clear_line(run_cli("analyze", clip, "--model", tmp_path / "no-tokenizer-json", "--transcript", transcript),
                   "no-tokenizer-json/text_encoder/tokenizer.json not found: the model folder is incomplete")
    one_clear_line(run_cli("analyze", clip, "--model", model_dir.parent, "--transcript", transcript),
                   f"did you mean {model_dir}?")
    one_clear_line(run_cli("analyze", tmp_path, "--model", model_dir, "--transcript", transcript), "a folder, not a media file")
    one_clear_line(run_cli("analyze", clip, "--model", model_dir, "--transcript", transcript, "--device", "cuda:7"),
                   "--device cuda:7: no such CUDA GPU here")


def test_weight_files_are_never_unpickled(tmp_path, sample_dir):
    from torchvision.models.video import r3d_18

    pickled = tmp_path / "r3d.pth"
    torch.save(r3d_18(weights=None), pickled)  # a whole pickled module, not a state dict
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    for path, needle in ((pickled, "not a plain tensor file"), (other, "not an R3D-18 state dict")):
        result = run_cli("extract", "--data", sample_dir, "--text-encoder", "tiny", "--video-weights", path,
                         "--modalities", "video", "--out", tmp_path / "cache")
        one_clear_line(result, str(path), needle)
        assert "weights_only=False" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Training: no dead ends

def user_csv(folder, rows: dict[str, list[tuple[str, str]]]):
    """train.csv / dev.csv in `folder`: rows of (media path, text), all labelled joy / positive."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        lines = ["path,text,emotion,sentiment"] + [f"{p},{t},joy,positive" for p, t in items]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_failed_starts_leave_nothing_that_blocks_the_corrected_rerun(sample_dir, tmp_path):
    run = tmp_path / "run"
    one_clear_line(run_cli("train", "--data", tmp_path / "no-such-data", "--out", run, *FAST), "no-such-data: no such file or folder")
    assert not run.exists()
    one_clear_line(run_cli("train", "--data", sample_dir, "--out", run, "--text-encoder", tmp_path / "nowhere", "--video-weights",
                           "none", "--modalities", "text"), "unknown text encoder")
    assert not run.exists()
    one_clear_line(run_cli("train", "--data", sample_dir, "--out", run, "--text-encoder", "bert-base-uncased", "--video-weights",
                           "none", "--modalities", "text", env={"HF_HUB_OFFLINE": "1"}), "offline choices: --text-encoder minilm")
    assert not run.exists()
    header_only = user_csv(tmp_path / "header-only", {"train": [], "dev": [("a.mp4", "hi")]})
    one_clear_line(run_cli("train", "--data", header_only, "--out", run, *FAST), "header-only/train.csv: no rows under the header")
    # a start killed before its first checkpoint: the same command, and --resume, both start again
    run.mkdir()
    (run / "run_config.json").write_text("{}")
    (run / "tensorboard").mkdir()
    for extra in ((), ("--resume",)):
        result = run_cli("train", "--data", sample_dir, "--out", run, *FAST, "--epochs", "1", "--cache-dir", tmp_path / "cache", *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "no finished epoch to resume from, so the run starts from the beginning" in result.stdout
        assert (run / "model" / "model.safetensors").is_file()
        shutil.rmtree(run / "checkpoints")
        shutil.rmtree(run / "model")
    # a folder with someone else's files is never taken over
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    one_clear_line(run_cli("train", "--data", sample_dir, "--out", tmp_path / "mine", *FAST), "holds files that are not an emosent run")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"


def test_a_second_trainer_on_one_folder_is_refused_with_the_holders_pid(sample_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with exclusive(run / ".lock", wait=False, holder=f"run folder {run}"):  # this test process holds it
        result = run_cli("train", "--data", sample_dir, "--out", run, *FAST, "--cache-dir", tmp_path / "cache")
    one_clear_line(result, f"run folder {run} is in use by another emosent process (PID {os.getpid()})")


def test_a_split_with_no_usable_clip_stops_before_training(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.mp4").write_text("not a video")
    user_csv(data, {"train": [("notes.mp4", "hello"), ("missing.mp4", "hi")], "dev": [("notes.mp4", "hello")]})
    for extra in ((), ("--train-audio-conv",)):  # from the feature cache, and end to end
        run = tmp_path / f"run{len(extra)}"
        result = run_cli("train", "--data", data, "--out", run, *FAST, "--cache-dir", tmp_path / "cache", *extra)
        one_clear_line(result, "no usable clip in the train split", "skipped 2 of 2", "train.csv:2", "notes.mp4")
        assert not (run / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# Signals, resuming to the same weights, and the shared feature cache

def weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, differ


def start(args, out):
    return subprocess.Popen([sys.executable, "-m", "emosent", *map(str, args), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting {prefix!r}; stderr: {proc.stderr.read()[-2000:]}")


# End to end (the audio convolutions train), with loader workers: every source of drift at once
# (data order, dropout, the plateau scheduler, which the high LRs make cut the rates).
RESUMABLE = [*TINY, "--modalities", "video,audio", "--train-audio-conv", "--epochs", "3", "--batch-size", "2",
             "--num-workers", "2", "--seed", "7", "--lr-fusion", "0.05", "--lr-heads", "0.05"]


@pytest.fixture(scope="module")
def uninterrupted(sample_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli("train", "--data", sample_dir, *RESUMABLE, "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(sample_dir, uninterrupted, tmp_path, how):
    """The stop lands in epoch 2 or at its start: either way the resumed run must end with the
    weights of the uninterrupted one, to the bit."""
    args = ["train", "--data", sample_dir, *RESUMABLE]

    stopped = tmp_path / "stopped"
    proc = start(args, stopped)
    wait_for_line(proc, "epoch 1/3")
    proc.send_signal(getattr(signal, how))
    _, stderr = proc.communicate(timeout=120)
    assert not (stopped / "model").exists()
    if how == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, (proc.returncode, stderr[-3000:])
        assert "stopped by SIGTERM" in stderr and "holds the last finished epoch; continue with: emosent train" in stderr, stderr[-600:]
        assert stderr.rstrip().endswith("--resume")
    resumed = run_cli(*args, "--out", stopped, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(uninterrupted, stopped)
    training = json.loads((stopped / "model" / "training.json").read_text())
    best = training["best_checkpoint"]
    assert best == f"best-epoch{training['best_epoch']:02d}.ckpt" and (stopped / "checkpoints" / best).is_file()


def test_extract_stops_promptly_on_sigterm_and_keeps_finished_shards(sample_dir, tmp_path):
    args = ["extract", "--data", sample_dir, *TINY, "--shard-rows", "2", "--batch-size", "2"]
    proc = start(args, tmp_path / "cache")
    wait_for_line(proc, "features: rank 0 wrote shard-00000")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)  # today's R3D-18 batch of 2 clips takes about a second
    assert proc.returncode == 128 + signal.SIGTERM and "finished shards are kept" in stderr and "Traceback" not in stderr
    (folder,) = (tmp_path / "cache" / "features").glob("train-*[0-9]")
    kept = len(list(folder.glob("shard-*.safetensors")))
    assert 1 <= kept < 7 and not list(folder.glob("*.tmp"))
    again = run_cli(*args, "--out", tmp_path / "cache")
    assert again.returncode == 0 and f"({kept} of 7 shards already done)" in again.stdout


def test_two_trains_sharing_a_cache_extract_once_and_relative_paths_hit_it(sample_dir, tmp_path):
    cache = tmp_path / "cache"
    args = ["train", "--data", sample_dir, *FAST, "--epochs", "1", "--cache-dir", cache]
    procs = [start(args, tmp_path / f"run{i}") for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outputs]
    stdout = "".join(o for o, _ in outputs)
    assert stdout.count("extracting frozen features of 14 train rows") == 1, stdout
    assert stdout.count("extracting frozen features of 14 dev rows") == 1, stdout
    assert stdout.count("reusing cached train features") == 1 and stdout.count("reusing cached dev features") == 1
    assert_same_weights(tmp_path / "run0", tmp_path / "run1")
    # the same data spelled relative to another working directory: the same cache entry
    relative = subprocess.run([sys.executable, "-m", "emosent", "train", "--data", os.path.relpath(sample_dir, tmp_path), *FAST,
                               "--epochs", "1", "--cache-dir", cache, "--out", "run2"], cwd=tmp_path, capture_output=True, text=True)
    assert relative.returncode == 0, relative.stderr[-2000:]
    assert "reusing cached train features" in relative.stdout and "extracting" not in relative.stdout
