"""--audio-layer, --audio-norm and --audio-head of the whisper-base audio encoder: the config's checks,
what each changes in the features or the network, and tiny models through train -> save -> load ->
analyze / evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, tone
from emosent import EmotionSentimentModel, ModelConfig
from emosent.analyze import analyze
from emosent.model import model_inputs
from emosent.pretrained import read_model_config
from emosent.data import Utterance
from emosent.encoders.whisper import WhisperAudioEncoder, band_mean_normalised, ct2_without, standardiser, whisper_base_dir
from emosent.synthetic import write_clip


def whisper(**options) -> EmotionSentimentModel:
    torch.manual_seed(0)
    config = ModelConfig(text_encoder="tiny", modalities=("audio",), audio_encoder="whisper-base", **options)
    return EmotionSentimentModel(config).eval()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    d = tmp_path_factory.mktemp("layers")
    clip = write_clip(d / "a.mp4", duration_s=1.5, audio_fn=lambda t: tone(220.0)(t) + tone(1300.0)(t) * (t > 0.7))
    model = whisper()
    return model.processor.collate([model.processor(Utterance(text="x", emotion=None, sentiment=None, path=clip, source=str(clip)), 0)])


def features(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(batch)["audio_features"]


@pytest.mark.parametrize("options, problem", [
    ({"audio_layer": 0, "audio_encoder": "whisper-base"}, "audio_layer must be at least 1"),
    ({"audio_layer": 7, "audio_encoder": "whisper-base"}, "audio_layer must be less than 7"),
    ({"audio_norm": "speaker", "audio_encoder": "whisper-base"}, "audio_norm must be one of"),
    ({"audio_layer": 3}, "audio_layer is a setting of the whisper-base audio encoder, not of 'cnn'"),
    ({"audio_norm": "cmvn"}, "audio_norm is a setting of the whisper-base audio encoder"),
    ({"audio_head": "svm", "audio_encoder": "whisper-base"}, "audio_head must be one of"),
    ({"audio_head": "linear"}, "audio_head is a setting of the whisper-base audio encoder, not of 'cnn'"),
    ({"audio_head": "linear", "audio_encoder": "whisper-base", "modalities": ("text", "audio")},
     r"audio_head 'linear' is for a model of audio alone, got modalities \['text', 'audio'\]"),
])
def test_bad_settings_are_refused_by_name(options, problem):
    with pytest.raises(ValueError, match=problem):
        ModelConfig(**{"text_encoder": "tiny", "modalities": ("audio",), **options})


def test_a_folder_without_the_new_fields_loads_as_today(tmp_path):
    folder = whisper().save_pretrained(tmp_path / "old")
    meta = json.loads((folder / "config.json").read_text())
    for name in ("audio_layer", "audio_norm", "audio_head"):  # written by an emosent before these options
        del meta["model_config"][name]
    (folder / "config.json").write_text(json.dumps(meta))
    config = read_model_config(folder)[0]
    assert (config.audio_layer, config.audio_norm, config.audio_head) == (6, "none", "mlp")
    old = EmotionSentimentModel.from_pretrained(folder)  # today's network, weights and all
    assert isinstance(old.fusion[1], torch.nn.BatchNorm1d) and old.emotion_head[-1].out_features == 7
    bad = {**meta, "model_config": {**meta["model_config"], "audio_layer": "3"}}
    (folder / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="config.json: model_config: audio_layer: Input should be a valid integer"):
        read_model_config(folder)


def test_the_cut_model_bin_keeps_everything_but_the_dropped_layers(tmp_path):
    whole = whisper_base_dir() / "model.bin"
    cut = ct2_without(whole, tuple(f"encoder/layer_{i}/" for i in range(3, 6)))
    assert 0.8 * whole.stat().st_size < len(cut) < whole.stat().st_size  # 3 of 6 encoder layers, the decoder untouched
    assert b"encoder/layer_2/ffn" in cut and b"encoder/layer_3/" not in cut and b"decoder/layer_3/" in cut


def test_layers_and_cmvn_change_the_features_as_they_should(batch):
    last, explicit_last, middle = features(whisper(), batch), features(whisper(audio_layer=6), batch), features(whisper(audio_layer=3), batch)
    torch.testing.assert_close(explicit_last, last)  # the default is today's encoder
    assert not torch.allclose(middle, last, atol=1e-2)
    # A fixed filter (a microphone, a room) is an offset per mel band: cmvn takes it out, the plain input does not.
    coloured = dict(batch, audio=batch["audio"].clone())
    n = int(batch["audio_lengths"][0])
    coloured["audio"][0, 0, :, :n] += torch.linspace(-0.4, 0.4, 80)[:, None]
    plain, cmvn = whisper(audio_layer=3), whisper(audio_layer=3, audio_norm="cmvn")
    assert (features(plain, coloured) - features(plain, batch)).abs().max() > 0.05
    torch.testing.assert_close(features(cmvn, coloured), features(cmvn, batch), atol=2e-2, rtol=0)
    mel = np.random.default_rng(0).normal(size=(80, 50)).astype(np.float32)
    normalised = band_mean_normalised(mel)
    np.testing.assert_allclose(normalised.mean(1), np.full(80, mel.mean()), atol=1e-5)


def train_whisper(data, tmp_path, *options: str) -> dict:
    """`emosent train` of a whisper-base voice model with `options` into tmp_path / "run": the saved model_config."""
    result = run_cli("train", "--data", data, "--out", tmp_path / "run", "--text-encoder", "tiny", "--modalities", "audio",
                     "--audio-encoder", "whisper-base", *options, "--batch-size", "8", "--num-workers", "0",
                     "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "run" / "model" / "config.json").read_text())["model_config"]


def test_train_save_load_analyze_with_a_middle_layer_and_cmvn(sample_dir, tmp_path):
    run = tmp_path / "run"
    config = train_whisper(sample_dir, tmp_path, "--audio-layer", "3", "--audio-norm", "cmvn", "--epochs", "1")
    assert (config["audio_layer"], config["audio_norm"]) == (3, "cmvn")
    clip = write_clip(tmp_path / "voice.mp4", duration_s=1.2, audio_fn=tone(330.0))
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"start": 0, "end": 1.2, "text": "hello"}]))
    out = analyze(clip, run / "model", transcript=transcript)
    assert len(out["utterances"]) == 1 and out["utterances"][0]["emotion"]
    model = EmotionSentimentModel.from_pretrained(run / "model")
    assert (model.audio.layer, model.audio.norm) == (3, "cmvn")
    wrong = run_cli("train", "--data", sample_dir, "--out", tmp_path / "bad", "--text-encoder", "tiny", "--modalities", "audio",
                    "--audio-layer", "3", "--epochs", "1")
    assert wrong.returncode == 2 and "whisper-base" in wrong.stderr and "Traceback" not in wrong.stderr


def test_the_standardiser_holds_the_training_sets_mean_and_variance():
    # momentum None: the running statistics are the plain average over every training batch, so a
    # model trained for many epochs z-scores with its training set's statistics, not its last batches'
    rows = torch.randn(96, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + torch.tensor([0.0, 50.0, -2.0, 1.0, 7.0])
    bn = standardiser(5).train()
    for _ in range(3):  # epochs over the same batches, last batch the odd one out
        for batch in (rows[:32], rows[32:64], rows[64:] * 2):
            bn(batch)
    batches = (rows[:32], rows[32:64], rows[64:] * 2)
    torch.testing.assert_close(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0))
    z = bn.eval()(rows)
    torch.testing.assert_close(z, (rows - bn.running_mean) / (bn.running_var + bn.eps).sqrt())
    assert not any(p.requires_grad for p in bn.parameters())  # nothing for Adam: only statistics


def test_train_save_load_evaluate_with_a_linear_head(sample_dir, tmp_path):
    run = tmp_path / "run"
    config = train_whisper(sample_dir, tmp_path, "--audio-layer", "3", "--audio-head", "linear", "--epochs", "2")
    assert (config["audio_layer"], config["audio_head"]) == (3, "linear")
    model = EmotionSentimentModel.from_pretrained(run / "model")
    assert isinstance(model.emotion_head, torch.nn.Linear) and model.emotion_head.in_features == 1024
    assert isinstance(model.fusion, torch.nn.Identity)
    bn = model.audio.projection[0]
    assert int(bn.num_batches_tracked) > 0 and bn.running_mean.abs().max() > 0  # statistics learnt and saved
    evaluated = run_cli("evaluate", "--model", run / "model", "--data", sample_dir, "--split", "dev", "--out", tmp_path / "eval",
                        "--cache-dir", tmp_path / "cache")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 14 and all(r["emotion"] in r["emotion_probs"] for r in rows)
    # the saved network is a logistic regression on the z-scored features, computed here by hand
    clip = write_clip(tmp_path / "voice.mp4", duration_s=1.2, audio_fn=tone(330.0))
    batch = model.processor.collate([model.processor(Utterance(text="x", emotion=None, sentiment=None, path=clip, source=str(clip)), 0)])
    with torch.no_grad():
        x = model.encode(batch)["audio_features"]
        z = (x - bn.running_mean) / (bn.running_var + bn.eps).sqrt()
        torch.testing.assert_close(model(**model_inputs(batch)).emotion_logits, z @ model.emotion_head.weight.T + model.emotion_head.bias)
    mixed = run_cli("train", "--data", sample_dir, "--out", tmp_path / "bad", "--text-encoder", "tiny", "--modalities", "text,audio",
                    "--audio-encoder", "whisper-base", "--audio-head", "linear", "--epochs", "1")
    assert mixed.returncode == 2 and "audio alone" in mixed.stderr and "Traceback" not in mixed.stderr, mixed.stderr[-2000:]


def test_a_standardised_mlp_reads_features_whatever_their_scale():
    # the z-score makes the head blind to each feature's unit: features scaled by 1000 in training and
    # at evaluation give the same answers, which the design's MLP on raw features does not
    def trained_head(scale: torch.Tensor, head: str) -> torch.Tensor:
        torch.manual_seed(0)
        encoder = WhisperAudioEncoder(128, 0.2, load=False, head=head).train()
        rows = torch.randn(64, 1024) * scale
        for batch in rows.split(16):
            encoder.head(batch)
        return encoder.eval().head(rows[:4])

    scale = torch.ones(1024)
    scale[::2] = 1000.0
    torch.testing.assert_close(trained_head(scale, "standardised-mlp"), trained_head(torch.ones(1024), "standardised-mlp"), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(trained_head(scale, "mlp"), trained_head(torch.ones(1024), "mlp"), atol=1e-2)
    # unlike the linear head, it joins other modalities' features in the fusion block
    ModelConfig(text_encoder="tiny", modalities=("text", "audio"), audio_encoder="whisper-base", audio_head="standardised-mlp")
