"""The frozen-feature cache: same logits as raw inputs, fingerprints, resumable shards."""

from __future__ import annotations

import torch

from conftest import run_cli
from emosent import EmotionSentimentModel, ModelConfig
from emosent.data import UtteranceDataset, read_manifest
from emosent.features import FeatureDataset, extract_features, fingerprint
from emosent.model import model_inputs


def tiny_model(**overrides) -> EmotionSentimentModel:
    torch.manual_seed(0)
    return EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none", **overrides)).eval()


def test_logits_from_cached_features_equal_logits_from_raw_inputs(sample_dir, tmp_path):
    model = tiny_model()
    records = read_manifest(sample_dir, "dev")[:4]
    features = extract_features(model, records, "dev", tmp_path, num_workers=0)
    cached = next(iter(torch.utils.data.DataLoader(FeatureDataset(features), batch_size=4)))
    raw = model.processor.collate([UtteranceDataset(records, model.processor)[i] for i in range(4)])
    with torch.no_grad():
        from_raw = model(**model_inputs(raw))
        from_cache = model(**model_inputs(cached))
    assert set(model_inputs(cached)) == {"text_features", "video_features", "audio_features", "audio_lengths",
                                         "video_present", "audio_present"}  # the masks are kept with the features
    torch.testing.assert_close(from_cache.emotion_logits, from_raw.emotion_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_cache.sentiment_logits, from_raw.sentiment_logits, atol=1e-5, rtol=0)


def test_fingerprint_follows_weights_pooling_and_rows(sample_dir):
    records = read_manifest(sample_dir, "dev")
    base = tiny_model(modalities=("text",))
    key = fingerprint(base, records)
    assert fingerprint(tiny_model(modalities=("text",)), records) == key  # same seed, same everything
    assert fingerprint(tiny_model(modalities=("text",), pooling="mean"), records) != key
    assert fingerprint(base, records[:-1]) != key
    torch.manual_seed(1)
    other_weights = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",)))
    assert fingerprint(other_weights, records) != key


def test_interrupted_extraction_redoes_only_missing_shards(sample_dir, tmp_path, capsys):
    model = tiny_model(modalities=("text", "audio")).train()
    records = read_manifest(sample_dir, "train")  # 14 rows, 4 shards of 4
    first = extract_features(model, records, "train", tmp_path, num_workers=0, shard_rows=4)
    assert model.training and model.fusion.training  # extraction hands the model back in the mode it got it
    shards = sorted(first.directory.glob("shard-*.safetensors"))
    assert len(shards) == 4
    kept = {p: p.stat().st_mtime_ns for p in shards[:2] + shards[3:]}
    shards[2].unlink()  # as if killed while the third shard was being gathered
    capsys.readouterr()
    second = extract_features(model, records, "train", tmp_path, num_workers=0, shard_rows=4)
    out = capsys.readouterr().out
    assert "(3 of 4 shards already done)" in out and "wrote shard-00002" in out and "wrote shard-00000" not in out
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    for name, tensor in first.tensors.items():
        assert torch.equal(second.tensors[name], tensor), name


def test_bad_clips_are_skipped_and_counted_at_extraction(sample_dir, tmp_path):
    records = read_manifest(sample_dir, "dev")[:3]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    records[1] = type(records[1])(**{**records[1].__dict__, "path": broken})
    features = extract_features(tiny_model(modalities=("audio",)), records, "dev", tmp_path / "cache", num_workers=0)
    assert len(features) == 2 and features.tensors["index"].tolist() == [0, 2]
    assert features.skipped.reasons == {"not a readable media file": 1}


def test_extraction_under_ddp_each_rank_writes_its_shards(sample_dir, tmp_path):
    result = run_cli("extract", "--data", sample_dir, "--split", "train", "--out", tmp_path, "--text-encoder", "tiny",
                     "--video-weights", "none", "--modalities", "text,audio", "--shard-rows", "4", "--num-workers", "0",
                     "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
    assert result.returncode == 0, result.stderr[-4000:]
    written = sorted(line.split(" wrote ")[1].split()[0] for line in result.stdout.splitlines() if " wrote " in line)
    assert written == [f"shard-{k:05d}.safetensors" for k in range(4)]
    assert "rank 0 wrote" in result.stdout and "rank 1 wrote" in result.stdout
    assert "train: 14 rows with features" in result.stdout
