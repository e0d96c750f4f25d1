"""Training and evaluation, run for real on a generated dataset."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from emosent import EmotionSentimentModel, ModelConfig
from emosent.train import class_weights

TINY = ("--text-encoder", "tiny", "--video-weights", "none")


def scalars(run_dir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_class_weights_are_inverse_frequency_normalised_to_mean_one():
    labels = ["joy"] * 6 + ["anger"] * 2 + ["fear"] * 1
    w = class_weights(labels, ("anger", "disgust", "fear", "joy"))
    # N / (K n_c) with N = 9, K = 3 classes present; an absent class weighs 0
    torch.testing.assert_close(w, torch.tensor([9 / 6, 0.0, 9 / 3, 9 / 18]))
    per_example = [float(w[("anger", "disgust", "fear", "joy").index(x)]) for x in labels]
    assert sum(per_example) / len(per_example) == pytest.approx(1.0)


def test_milder_and_no_class_weights():
    labels = ["joy"] * 16 + ["anger"] * 4
    sqrt = class_weights(labels, ("anger", "joy"), "sqrt")
    torch.testing.assert_close(sqrt[0] / sqrt[1], torch.tensor(2.0))  # sqrt(16 / 4)
    torch.testing.assert_close(class_weights(labels, ("anger", "joy"), "none"), torch.tensor([1.0, 1.0]))
    for kind in ("inverse", "sqrt", "none"):
        w = class_weights(labels, ("anger", "joy"), kind)
        assert float(4 * w[0] + 16 * w[1]) / 20 == pytest.approx(1.0)


def test_encoder_defaults_apply_only_where_the_user_gave_none():
    from emosent.encoders import text_defaults

    assert text_defaults("bert-base-uncased") == {"pooling": "pooler", "lr_text": 8e-6}  # the design, exactly
    assert text_defaults("minilm") == {"pooling": "mean", "lr_text": 5e-4}
    assert text_defaults("minilm", finetune_layers=2)["lr_text"] == 5e-5
    assert EmotionSentimentModel(ModelConfig(text_encoder="minilm", modalities=("text",))).config.pooling == "mean"
    assert EmotionSentimentModel(ModelConfig(text_encoder="minilm", modalities=("text",), pooling="pooler")).config.pooling == "pooler"


def test_choices_are_recorded_and_the_monitor_picks_the_checkpoint(sample_dir, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--data", sample_dir, "--out", run, *TINY, "--modalities", "text", "--epochs", "3", "--batch-size", "4",
                     "--class-weights", "sqrt", "--monitor", "val/emotion/weighted_f1", "--context", "2", "--finetune-text-layers", "1",
                     "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    training = json.loads((run / "model" / "training.json").read_text())
    assert training["train_config"]["class_weights"] == "sqrt" and training["train_config"]["monitor"] == "val/emotion/weighted_f1"
    assert training["train_config"]["lr"]["text"] == 5e-5  # no --lr-text, transformer layers train: the fine-tuning rate
    f1 = scalars(run)["val/emotion/weighted_f1"]
    assert training["best_epoch"] == 1 + max(range(len(f1)), key=lambda i: (f1[i], -i))  # the highest, first on a tie
    assert json.loads((run / "model" / "processor.json").read_text())["processor_config"]["context"] == 2
    evaluated = run_cli("evaluate", "--model", run / "model", "--data", sample_dir, "--split", "test", "--out", tmp_path / "eval",
                        "--cache-dir", tmp_path / "cache")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


def test_train_one_epoch_then_evaluate(sample_dir, tmp_path):
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    result = run_cli("train", "--data", sample_dir, "--out", run, *TINY, "--epochs", "1", "--batch-size", "4",
                     "--cache-dir", cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file() and list((run / "checkpoints").glob("best-*.ckpt"))
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    training = json.loads((run / "model" / "training.json").read_text())
    assert set(training["class_weights"]["emotion"]) == {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert training["global_step"] == 4  # 14 training clips in batches of 4: 4 steps
    tags = scalars(run)
    for tag in ("train/loss", "val/loss", "val/emotion/accuracy", "val/emotion/weighted_precision", "val/emotion/weighted_f1",
                "val/emotion/macro_f1", "val/sentiment/accuracy", "val/sentiment/macro_f1", "train/emotion/accuracy"):
        assert tag in tags, (tag, sorted(tags))
    assert any(t.startswith("lr-Adam/fusion") for t in tags) and any(t.startswith("lr-Adam/heads") for t in tags)
    # the checkpoints hold only what training changes: no frozen R3D-18 or BERT weights
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(".backbone." in k for k in ckpt["state_dict"]) and "model.fusion.0.weight" in ckpt["state_dict"]

    evaluation = run_cli("evaluate", "--model", run / "model", "--data", sample_dir, "--split", "test",
                         "--out", tmp_path / "eval", "--cache-dir", cache)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "emotion" in evaluation.stdout and "weighted_f1" in evaluation.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 14
    for task, k in (("emotion", 7), ("sentiment", 3)):
        report = metrics[task]
        assert {"accuracy", "weighted_precision", "weighted_f1", "macro_f1", "per_class", "confusion_matrix"} <= set(report)
        assert 0 <= report["accuracy"] <= 1 and len(report["per_class"]) == k
        assert sum(c["support"] for c in report["per_class"].values()) == 14
        assert sum(map(sum, report["confusion_matrix"])) == 14
        assert (tmp_path / "eval" / f"confusion_{task}.png").stat().st_size > 5000

    again = run_cli("train", "--data", sample_dir, "--out", tmp_path / "run2", *TINY, "--epochs", "1", "--batch-size", "4",
                    "--cache-dir", cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing cached train features" in again.stdout and "reusing cached dev features" in again.stdout
    assert "extracting" not in again.stdout
    # A warm cache trains exactly as the cold one did (same seed): same losses, same weights.
    assert scalars(tmp_path / "run2")["train/loss"] == tags["train/loss"]
    cold, warm = (load_file(r / "model" / "model.safetensors") for r in (run, tmp_path / "run2"))
    assert cold.keys() == warm.keys() and all(torch.equal(cold[k], warm[k]) for k in cold)


def test_training_reduces_the_loss(sample_dir, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--data", sample_dir, "--out", run, *TINY, "--modalities", "text,audio", "--epochs", "15",
                     "--batch-size", "2", "--cache-dir", tmp_path / "cache", "--lr-fusion", "3e-3", "--lr-heads", "3e-3",
                     "--lr-audio", "3e-3", "--lr-text", "3e-3")
    assert result.returncode == 0, result.stderr[-3000:]
    logged = scalars(run)
    train_loss, val_loss, val_accuracy = logged["train/loss"], logged["val/loss"], logged["val/emotion/accuracy"]
    # batches of 2 through BatchNorm make single epochs noisy: compare the last epochs with the first
    assert len(train_loss) == 15 and min(train_loss[-5:]) < 0.8 * train_loss[0], train_loss
    assert val_loss[-1] < 0.8 * val_loss[0], val_loss
    assert val_accuracy[-1] >= 2 / 7, val_accuracy  # chance is 1/7


def test_existing_run_dir_needs_resume(sample_dir, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    result = run_cli("train", "--data", sample_dir, "--out", tmp_path / "run", *TINY)
    assert result.returncode == 2 and "holds files that are not an emosent run (something)" in result.stderr


def test_trainable_audio_convolutions_train_on_the_cached_log_mel(sample_dir, tmp_path):
    result = run_cli("train", "--data", sample_dir, "--out", tmp_path / "run", *TINY, "--modalities", "audio",
                     "--train-audio-conv", "--audio-pooling", "masked", "--epochs", "2", "--batch-size", "8",
                     "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training end to end" not in result.stdout and result.stdout.count("extracting frozen features") == 2
    meta = json.loads(next((tmp_path / "cache" / "features").glob("train-*/meta.json")).read_text())
    assert meta["config"]["train_audio_conv"] and meta["config"]["audio_pooling"] == "masked"
    shard = load_file(next((tmp_path / "cache" / "features").glob("train-*/shard-00000.safetensors")))
    assert shard["audio_features"].shape[1:] == (1, 64, 300) and shard["audio_lengths"].dtype == torch.long
    model_dir = tmp_path / "run" / "model"
    training = json.loads((model_dir / "training.json").read_text())
    assert training["train_config"]["lr"]["audio"] == 1e-3
    config = json.loads((model_dir / "config.json").read_text())["model_config"]
    assert config["train_audio_conv"] and config["audio_pooling"] == "masked" and config["audio_augment"]
    trained = EmotionSentimentModel.from_pretrained(model_dir)
    torch.manual_seed(0)  # train's --seed 0: the convolutions' initial weights
    initial = EmotionSentimentModel(trained.config).audio.conv_layers[0].weight
    assert initial.shape == trained.audio.conv_layers[0].weight.shape
    assert not torch.equal(trained.audio.conv_layers[0].weight, initial)  # they trained
    result = run_cli("evaluate", "--model", model_dir, "--data", sample_dir, "--split", "dev", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing cached dev features" in result.stdout


def test_two_process_ddp_on_cpu(sample_dir, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--data", sample_dir, "--out", run, *TINY, "--modalities", "text,audio", "--epochs", "2",
                     "--batch-size", "4", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                     "--cache-dir", tmp_path / "cache", "--num-workers", "0")
    assert result.returncode == 0, result.stderr[-5000:]
    assert "world_size: 2" in result.stderr or "distributed_backend=gloo" in result.stderr
    # extraction ran under the same launcher: each rank wrote shards (1 shard per split here)
    examples = scalars(run)["val/examples"]
    assert examples == [14.0, 14.0]  # both devices' validation examples, each exactly once
    training = json.loads((run / "model" / "training.json").read_text())
    assert training["global_step"] == 2 * 2  # 14 clips / 2 ranks = 7 each, batches of 4: 2 steps per epoch


def test_non_default_preprocessing_round_trips_through_train_evaluate_and_analyze(sample_dir, tmp_path):
    """Settings given to train reach the saved model, and evaluate and analyze use them (a model
    fed the default 16 frames or 64 bands would refuse the input)."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = run_cli("train", "--data", sample_dir, "--out", run, *TINY, "--n-mels", "80", "--num-frames", "8", "--frame-size", "96",
                     "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--cache-dir", cache)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run / "model" / "processor.json").read_text())["processor_config"]
    assert (saved["n_mels"], saved["num_frames"], saved["frame_size"]) == (80, 8, 96)
    model = EmotionSentimentModel.from_pretrained(run / "model")
    assert model.audio.conv_layers[0].in_channels == 80

    evaluated = run_cli("evaluate", "--model", run / "model", "--data", sample_dir, "--split", "test", "--out", tmp_path / "eval",
                        "--cache-dir", cache)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["examples"] == 14

    clip = sorted((sample_dir / "output_repeated_splits_test").glob("*.mp4"))[0]
    subtitles = tmp_path / "s.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,900\nwhat a day\n")
    analysed = run_cli("analyze", clip, "--model", run / "model", "--subtitles", subtitles, "--out", tmp_path / "r.json")
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert len(result["utterances"]) == 1 and not result["skipped"]
