"""The audio branch's options: masked pooling, trainable convolutions on the cached log-mel, and
augmentation in training only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, tone
from emosent import EmotionSentimentModel, ModelConfig
from emosent.config import DESIGN_LR_AUDIO, TRAIN_CONV_LR_AUDIO, ProcessorConfig, TrainConfig
from emosent.data import UtteranceDataset, read_manifest
from emosent.data.media import load_clip, log_mel, mel_length
from emosent.features import FeatureDataset, collate_features, extract_features
from emosent.model import model_inputs
from emosent.train import EmotionSentimentTask


def audio_model(seed: int = 0, processor: ProcessorConfig = ProcessorConfig(), **overrides) -> EmotionSentimentModel:
    torch.manual_seed(seed)
    return EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none", modalities=("audio",), **overrides), processor)


def test_processor_carries_the_real_frames_of_each_clip(clips):
    model = audio_model()
    clip = load_clip(clips["normal"], modalities=("audio",))  # 2 s of tone (and the AAC encoder's priming) in 9.6 s
    n = clip.audio_frames
    assert 1 + 32_000 // 512 <= n <= 1 + 34_000 // 512
    assert clip.audio[..., n:].abs().max() == 0 and clip.audio[..., n - 1].abs().max() > 0
    batch = model.processor.collate([{"index": 0, "audio": clip.audio, "audio_length": n}])
    assert batch["audio_lengths"].tolist() == [n] and batch["audio_lengths"].dtype == torch.long
    silent = load_clip(clips["no_audio"], modalities=("audio",))
    assert silent.audio_frames == 0 and not silent.has_audio


@pytest.mark.parametrize("train_conv", [False, True])
def test_masked_pooling_ignores_padding(train_conv):
    """The same 2 s clip in a 9.6 s and a 4.8 s window: masked pooling gives the same feature, the
    design's pooling over all frames does not."""
    samples = tone()(np.arange(32_000) / 16_000)
    features = {}
    for pooling in ("all", "masked"):
        for window in (9.6, 4.8):
            settings = ProcessorConfig(audio_window_s=window)
            model = audio_model(processor=settings, audio_pooling=pooling, train_audio_conv=train_conv).eval()
            audio, n = log_mel(samples, settings).unsqueeze(0), torch.tensor([mel_length(samples, settings)])
            assert audio.shape == (1, 1, 64, settings.mel_frames) and n.item() == 63
            with torch.no_grad():
                features[pooling, window] = model.audio.convolve(audio, n)  # (1, 128)
    assert features["masked", 9.6].shape == (1, 128)
    torch.testing.assert_close(features["masked", 9.6], features["masked", 4.8], atol=1e-6, rtol=0)
    assert (features["all", 9.6] - features["all", 4.8]).abs().max() > 1e-3


def test_masked_pooling_is_the_mean_over_the_real_frames():
    model = audio_model(audio_pooling="masked").eval()
    audio = torch.randn(3, 1, 64, 300)
    lengths = torch.tensor([300, 40, 0])  # a full clip, a short one, silence
    with torch.no_grad():
        pooled = model.audio.convolve(audio, lengths)
        maps = model.audio.conv_layers[:-1](audio.squeeze(1))  # (3, 128, 147)
    assert pooled.shape == (3, 128)
    torch.testing.assert_close(pooled[0], maps[0].mean(-1))
    torch.testing.assert_close(pooled[1], maps[1, :, :17].mean(-1))  # (40 - 2) // 2 - 2 frames see real audio
    with pytest.raises(ValueError, match="needs audio_lengths"):
        model(audio=audio)
    with pytest.raises(ValueError, match=r"audio_lengths must be \(3,\) whole numbers"):
        model(audio=audio, audio_lengths=torch.tensor([1, 2, 301]))


def test_trainable_convolutions_shapes_and_parameters():
    model = audio_model(train_audio_conv=True, audio_pooling="masked").train()
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad and n.startswith("audio.")}
    assert trainable == {"conv_layers", "projection"} and model.frozen_modules() == []
    assert model.audio.conv_layers[1].training  # its BatchNorm trains too
    audio, lengths = torch.randn(4, 1, 64, 300), torch.tensor([300, 120, 80, 7])
    features = model.encode({"audio": audio, "audio_lengths": lengths})
    assert features["audio_features"].shape == (4, 1, 64, 300) and torch.equal(features["audio_lengths"], lengths)
    assert model(**features).emotion_logits.shape == (4, 7)
    assert audio_model().encode({"audio": audio})["audio_features"].shape == (4, 128)  # the design: pooled


def test_augmentation_changes_inputs_in_train_mode_only():
    model = audio_model(train_audio_conv=True, audio_pooling="masked")
    augment = model.audio.augment
    mel, lengths = torch.randn(4, 1, 64, 300), torch.tensor([300, 150, 100, 60])
    mel = mel * (torch.arange(300) < lengths[:, None])[:, None, None, :]  # zero padding, as log_mel pads
    model.eval()
    assert torch.equal(augment(mel, lengths), mel)
    seen = []
    for _ in range(2):
        model.eval()
        with torch.no_grad():
            seen.append(model(audio=mel, audio_lengths=lengths).emotion_logits)
    assert torch.equal(*seen)  # evaluation is deterministic: no augmentation, no dropout
    model.train()
    torch.manual_seed(0)
    out = augment(mel, lengths)
    assert out.shape == mel.shape and not torch.equal(out, mel)
    assert out[3, ..., 60:].abs().max() == 0  # padding stays padding
    assert (out[..., :60] == 0).any()  # some bins masked
    torch.manual_seed(0)
    assert torch.equal(augment(mel, lengths), out)  # a function of the RNG state: resumable training stays exact
    assert audio_model(train_audio_conv=True, audio_augment=False).audio.augment is None
    assert audio_model(audio_augment=True).audio.augment is None  # frozen convolutions: nothing to augment for


def test_cached_log_mel_gives_the_logits_of_raw_inputs(sample_dir, tmp_path):
    model = audio_model(train_audio_conv=True, audio_pooling="masked").eval()
    records = read_manifest(sample_dir, "dev")[:4]
    features = extract_features(model, records, "dev", tmp_path, num_workers=0)
    assert features.tensors["audio_features"].shape[1:] == (1, 64, 300)
    cached = collate_features([FeatureDataset(features)[i] for i in range(4)])
    raw = model.processor.collate([UtteranceDataset(records, model.processor)[i] for i in range(4)])
    assert set(model_inputs(cached)) == {"audio_features", "audio_lengths", "audio_present"}  # the mask is kept with the features
    assert torch.equal(cached["audio_lengths"], raw["audio_lengths"])
    with torch.no_grad():
        from_raw, from_cache = model(**model_inputs(raw)), model(**model_inputs(cached))
    torch.testing.assert_close(from_cache.emotion_logits, from_raw.emotion_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_cache.sentiment_logits, from_raw.sentiment_logits, atol=1e-5, rtol=0)


def test_audio_learning_rate_default_follows_the_convolutions():
    weights = (torch.ones(7), torch.ones(3))
    assert EmotionSentimentTask(audio_model(), TrainConfig(), *weights).config.lr["audio"] == DESIGN_LR_AUDIO == 8e-5
    trained = EmotionSentimentTask(audio_model(train_audio_conv=True), TrainConfig(), *weights)
    assert trained.config.lr["audio"] == TRAIN_CONV_LR_AUDIO
    given = TrainConfig(lr={**TrainConfig().lr, "audio": 3e-4})
    assert EmotionSentimentTask(audio_model(train_audio_conv=True), given, *weights).config.lr["audio"] == 3e-4


def test_model_folders_without_the_audio_fields_load_as_the_design(tmp_path):
    model = audio_model().eval()
    folder = model.save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    for key in ("audio_pooling", "audio_augment"):
        del meta["model_config"][key]
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = EmotionSentimentModel.from_pretrained(folder)
    assert loaded.config.audio_pooling == "all" and loaded.config == model.config
    audio = torch.randn(2, 1, 64, 300)
    with torch.no_grad():
        assert torch.equal(loaded(audio=audio).emotion_logits, model(audio=audio).emotion_logits)


def test_bad_audio_pooling_is_one_line():
    result = run_cli("train", "--data", "x", "--out", "y", "--audio-pooling", "max")
    assert result.returncode == 2 and "--audio-pooling: invalid choice: 'max'" in result.stderr
    assert "Traceback" not in result.stderr
