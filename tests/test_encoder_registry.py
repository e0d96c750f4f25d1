"""The encoder registry: every entry tells the truth about its inputs and width, and an audio
encoder of one's own takes its module and one `register` call to train, save, load and analyse."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import solid_frames, tone
from emosent import EmotionSentimentModel, ModelConfig
from emosent.analyze import analyze
from emosent.config import AUDIO_ENCODERS, Launch, ProcessorConfig, TrainConfig
from emosent.data import Utterance
from emosent.encoders.base import Encoder
from emosent.encoders.weights import WeightsUnavailableError
from emosent.model import model_inputs
from emosent.pretrained import load_pretrained
from emosent.registry import ENCODERS, EncoderSpec, register
from emosent.synthetic import write_clip
from emosent.train import train

N_MELS = ProcessorConfig().n_mels


class BandStats(Encoder):
    """(B, 1, M, F) log-mel and (B,) real frames -> (B, feature_dim): the mean and standard
    deviation of each mel band over the clip's real frames (B, 2M), then a linear projection."""

    inputs = ("audio",)

    def __init__(self, n_mels: int, out_dim: int):
        super().__init__()
        self.feature_width = 2 * n_mels
        self.projection = nn.Linear(self.feature_width, out_dim)

    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        mel = audio[:, 0]  # (B, M, F)
        if lengths is None:
            lengths = torch.full(mel.shape[:1], mel.shape[-1], device=mel.device)
        real = (torch.arange(mel.shape[-1], device=mel.device) < lengths[:, None]).to(mel.dtype)[:, None, :]  # (B, 1, F)
        n = real.sum(-1).clamp(min=1.0)  # (B, 1)
        mean = (mel * real).sum(-1) / n  # (B, M)
        std = (((mel - mean[..., None]) ** 2 * real).sum(-1) / n).sqrt()
        return torch.cat([mean, std], 1)

    def head(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.projection(features)


def build_band_stats(config: ModelConfig, processor_config: ProcessorConfig, *, pretrained: bool, source=None) -> BandStats:
    return BandStats(processor_config.n_mels, config.feature_dim)


@pytest.fixture
def band_stats():
    register(EncoderSpec("band-stats", "audio", build_band_stats, ("audio",), 2 * N_MELS,
                         "mean and std of each mel band over the clip's real frames"))
    yield
    ENCODERS["audio"].pop("band-stats", None)


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    """A 2 s file with a video stream and a tone, and a transcript of two segments."""
    d = tmp_path_factory.mktemp("voice")
    clip = write_clip(d / "voice.mp4", duration_s=2.0, width=160, height=120, frame_fn=solid_frames(160, 120), audio_fn=tone())
    (d / "t.json").write_text(json.dumps([{"start": 0.0, "end": 1.0, "text": "hello there"},
                                          {"start": 1.0, "end": 2.0, "text": "bye now"}]))
    return clip, d / "t.json"


def batch_of(model, clip, spans):
    return model.processor.collate([model.processor(Utterance(text="x", emotion=None, sentiment=None, path=clip, start=s, end=e,
                                                              source=str(clip)), i) for i, (s, e) in enumerate(spans)])


@pytest.mark.parametrize("modality,name", [(m, n) for m in ("text", "video", "audio") for n in ENCODERS[m]
                                           if n != "bert-base-uncased"])  # the Hub's: not offline
def test_each_entry_reads_its_inputs_and_gives_its_width(modality, name, voice):
    if name == "mpnet":  # an optional extra
        from emosent.encoders.mpnet import part_files

        try:
            part_files()
        except WeightsUnavailableError as err:
            pytest.skip(str(err))
    torch.manual_seed(0)
    spec = ENCODERS[modality][name]
    config = ModelConfig(modalities=(modality,), video_weights="none",
                         **{"text_encoder" if modality == "text" else f"{modality}_encoder": name})
    model = EmotionSentimentModel(config).eval()
    batch = batch_of(model, voice[0], [(0.0, 1.0)])
    batch_entry = {"text": "input_ids", "video": "video", "frames": "faces", "audio": "audio", "whisper": "audio"}
    assert {batch_entry[i] for i in spec.inputs} <= set(batch)  # what the entry says the processor reads
    with torch.no_grad():
        features = model.encode(batch)[f"{modality}_features"]
    assert features.shape == (1, spec.width) and model.encoders[modality].feature_width == spec.width


def test_an_audio_encoder_registered_here_trains_saves_loads_and_analyses(band_stats, sample_dir, voice, tmp_path, monkeypatch):
    assert "band-stats" in AUDIO_ENCODERS  # a choice of ModelConfig (and --audio-encoder) from now on
    config = ModelConfig(modalities=("audio",), audio_encoder="band-stats")
    folder = train(sample_dir, tmp_path / "run", config, TrainConfig(epochs=1, batch_size=8, num_workers=0),
                   Launch(accelerator="cpu", devices=1), cache_dir=tmp_path / "cache")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model_config"]["audio_encoder"] == "band-stats" and meta["frozen_encoders"] == {}  # nothing by name

    model = load_pretrained(folder)
    assert isinstance(model.audio, BandStats)
    torch.manual_seed(0)  # train's seed: the same initialisation, which one epoch has moved
    assert not torch.equal(EmotionSentimentModel(config).audio.projection.weight, model.audio.projection.weight)

    clip, transcript = voice
    result = analyze(clip, folder, transcript=transcript, batch_size=2)
    assert [u["text"] for u in result["utterances"]] == ["hello there", "bye now"] and not result["skipped"]
    with torch.no_grad():  # analyze's numbers are the loaded model's on the processor's batch
        p = model(**model_inputs(batch_of(model, clip, [(0.0, 1.0), (1.0, 2.0)]))).emotion_logits.softmax(-1)
    for u, row in zip(result["utterances"], p):
        assert u["emotions"][0]["confidence"] == pytest.approx(float(row.max()), abs=1e-3)

    monkeypatch.delitem(ENCODERS["audio"], "band-stats")  # a process that has not registered it
    with pytest.raises(ValueError, match=r"unknown audio encoder 'band-stats'.*register yours"):
        load_pretrained(folder)
