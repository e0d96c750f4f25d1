"""Model folders: only what training changed, frozen encoders named with their sha256, a
self-contained export, and folders written before processor.json."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import random_batch, run_cli
from emosent import EmotionSentimentModel, ModelConfig
from emosent.config import ProcessorConfig
from emosent.encoders import build_r3d18, load_text_encoder


def folder_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).emotion_logits


@pytest.fixture
def named_encoders(tmp_path):
    """A local text encoder folder and an R3D-18 weights file: frozen encoders a model names."""
    torch.manual_seed(0)
    backbone, tokenizer = load_text_encoder("tiny")
    text_dir = tmp_path / "my-bert"
    backbone.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    video_file = tmp_path / "r3d.pth"
    torch.save(build_r3d18("none").state_dict(), video_file)
    return text_dir, video_file


def test_named_encoders_are_referenced_not_copied(named_encoders, tmp_path):
    text_dir, video_file = named_encoders
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder=str(text_dir), video_weights=str(video_file)))
    batch = random_batch()
    expected = logits(model, batch)
    small = model.save_pretrained(tmp_path / "small")
    whole = model.save_pretrained(tmp_path / "whole", include_frozen=True)
    meta = json.loads((small / "config.json").read_text())
    assert set(meta["frozen_encoders"]) == {"text", "video"}
    assert meta["frozen_encoders"]["text"]["source"] == str(text_dir.resolve())
    assert all(len(ref["sha256"]) == 64 and not ref["in_folder"] for ref in meta["frozen_encoders"].values())
    assert folder_size(whole) - folder_size(small) > 100e6  # R3D-18's 33M parameters stay out of the small folder
    torch.testing.assert_close(logits(EmotionSentimentModel.from_pretrained(small), batch), expected, atol=0, rtol=0)

    video_file.unlink()  # the encoder the folder names is gone: one line naming it and the way out
    with pytest.raises(ValueError, match=r"names the video encoder .*r3d.pth.* \(sha256 [0-9a-f]{12}\), which cannot be loaded "
                                         r"here .*; put the original .* back, or use a self-contained copy"):
        EmotionSentimentModel.from_pretrained(small)
    result = run_cli("export", "--model", small, "--out", tmp_path / "copy")  # the same, as a user sees it
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if "error:" in line and "names the video encoder" in line]
    torch.save(build_r3d18("none").state_dict(), video_file)  # a file of that name, other weights
    with pytest.raises(ValueError, match=r"the one found here differs \(sha256 [0-9a-f]{12}\)"):
        EmotionSentimentModel.from_pretrained(small)
    shutil.rmtree(text_dir)
    with pytest.raises(ValueError, match="names the text encoder .*my-bert"):
        EmotionSentimentModel.from_pretrained(small)
    # the self-contained export needs none of them
    torch.testing.assert_close(logits(EmotionSentimentModel.from_pretrained(whole), batch), expected, atol=0, rtol=0)


def test_random_frozen_parts_stay_in_the_folder(tmp_path):
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none"))
    folder = model.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["frozen_encoders"] == {}
    batch = random_batch()
    torch.testing.assert_close(logits(EmotionSentimentModel.from_pretrained(folder), batch), logits(model, batch), atol=0, rtol=0)


def test_a_minilm_text_and_audio_folder_is_small(tmp_path):
    model = EmotionSentimentModel(ModelConfig(text_encoder="minilm", modalities=("text", "audio")))
    folder = model.save_pretrained(tmp_path / "m")
    assert folder_size(folder) < 5e6, folder_size(folder)
    loaded = EmotionSentimentModel.from_pretrained(folder)
    batch = {k: v for k, v in random_batch().items() if k != "video"}
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=0, rtol=0)


def test_a_folder_from_before_processor_json_still_loads(tmp_path):
    """Format 1 (before this version): every weight in model.safetensors, n_mels in model_config,
    no processor.json, no frozen_encoders."""
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none"))
    folder = model.save_pretrained(tmp_path / "old", include_frozen=True)
    meta = json.loads((folder / "config.json").read_text())
    old = {"model_config": {**meta["model_config"], "n_mels": 64}, "emotions": meta["emotions"], "sentiments": meta["sentiments"]}
    (folder / "config.json").write_text(json.dumps(old))
    (folder / "processor.json").unlink()
    batch = random_batch()
    loaded = EmotionSentimentModel.from_pretrained(folder)
    assert loaded.processor.config == ProcessorConfig()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=0, rtol=0)


def test_processor_settings_round_trip(tmp_path):
    settings = ProcessorConfig(num_frames=8, frame_size=64, n_mels=80, audio_window_s=4.8, max_tokens=32)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none"), settings)
    loaded = EmotionSentimentModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.processor.config == settings and loaded.audio.conv_layers[0].in_channels == 80
    assert json.loads((tmp_path / "m" / "processor.json").read_text())["processor_config"]["n_mels"] == 80
