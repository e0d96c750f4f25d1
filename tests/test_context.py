"""Dialogue context and fine-tuning the top of the text encoder: how the context is assembled,
that frozen layers never change, and that the deeper cache gives the logits of running the layers."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from emosent import EmotionSentimentModel, ModelConfig
from emosent.config import ProcessorConfig
from emosent.data import read_manifest
from emosent.data.manifest import Utterance
from emosent.features import FeatureDataset, collate_features, extract_features
from emosent.model import model_inputs

MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def text_model(context: int = 0, finetune: int = 0, pooling: str = "mean", seed: int = 0) -> EmotionSentimentModel:
    torch.manual_seed(seed)
    return EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",), pooling=pooling, finetune_text_layers=finetune),
                                 ProcessorConfig(context=context))


def test_meld_history_follows_utterance_order_within_each_dialogue(tmp_path):
    # rows out of order, two dialogues interleaved: history follows Utterance_ID, never crosses dialogues
    write_csv(tmp_path / "dev_sent_emo.csv", MELD_HEADER, [
        [1, "second", "Ross", "joy", "positive", 7, 1],
        [2, "other dialogue", "Monica", "fear", "negative", 8, 0],
        [3, "first", "Rachel", "neutral", "neutral", 7, 0],
        [4, "third", "Rachel", "anger", "negative", 7, 2],
    ])
    rows = {u.text: u for u in read_manifest(tmp_path, "dev")}
    assert rows["first"].history == () and rows["other dialogue"].history == ()
    assert rows["second"].history == (("Rachel", "first"),)
    assert rows["third"].history == (("Rachel", "first"), ("Ross", "second")) and rows["third"].speaker == "Rachel"


def test_own_csv_dialogues_use_the_order_column_else_row_order(tmp_path):
    header = ["path", "text", "emotion", "sentiment", "dialogue", "speaker"]
    write_csv(tmp_path / "rows.csv", header, [["", "a", "joy", "positive", "d1", "A"], ["", "b", "joy", "positive", "d1", "B"],
                                               ["", "c", "joy", "positive", "", ""]])
    a, b, c = read_manifest(tmp_path / "rows.csv", None)
    assert (a.history, b.history, c.history) == ((), (("A", "a"),), ())  # an empty dialogue is an utterance on its own
    write_csv(tmp_path / "ordered.csv", [*header, "order"], [["", "late", "joy", "positive", "d", "", "2"],
                                                              ["", "early", "joy", "positive", "d", "", "1"]])
    late, early = read_manifest(tmp_path / "ordered.csv", None)
    assert late.history == ((None, "early"),) and early.history == ()


def test_the_processor_reads_the_last_k_utterances_most_recent_first_marked_apart():
    model = text_model(context=2)
    u = Utterance(text="and now?", emotion="joy", sentiment="positive", path=None, speaker="Joey",
                  history=(("Ross", "one"), ("Monica", "two"), (None, "three")))
    assert model.processor.context_of(u) == "three [SEP] Monica: two"
    first = Utterance(text="hello", emotion="joy", sentiment="positive", path=None)
    batch = model.processor.collate([model.processor(u, 0), model.processor(first, 1)])
    tokens = model.processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    current = [t for t, k, m in zip(tokens, batch["token_type_ids"][0], batch["attention_mask"][0]) if m and k == 0]
    assert current == ["[CLS]", "and", "now", "?", "[SEP]"]  # type 0: the utterance; type 1: its context
    assert batch["token_type_ids"][1][batch["attention_mask"][1].bool()].tolist() == [0, 0, 0, 1]  # [CLS] hello [SEP] [SEP]
    plain = text_model(context=0)
    assert "token_type_ids" not in plain.processor.collate([plain.processor(u, 0)])  # K=0: today's input, untouched


def test_context_changes_the_features_and_the_cache_key(sample_dir, tmp_path):
    records = read_manifest(sample_dir, "dev")
    assert any(r.history for r in records)
    with_context = extract_features(text_model(context=2).eval(), records, "dev", tmp_path, num_workers=0)
    without = extract_features(text_model(context=0).eval(), records, "dev", tmp_path, num_workers=0)
    assert with_context.directory != without.directory
    later = [i for i, r in enumerate(records) if r.history]
    a, b = with_context.tensors["text_features"], without.tensors["text_features"]
    assert all(not torch.allclose(a[i], b[i], atol=1e-3) for i in later)


@pytest.mark.parametrize("finetune", [1, 2])
def test_the_split_transformer_equals_the_whole(finetune):
    """Running the frozen layers, then the trainable ones (as cached training does) gives what
    the backbone's own forward gives."""
    model = text_model(context=2, finetune=finetune).eval()
    records = [Utterance(text=t, emotion=None, sentiment=None, path=None, history=(("A", "hi there"),)) for t in ("yes", "no way")]
    batch = model.processor.collate([model.processor(r, i) for i, r in enumerate(records)])
    with torch.no_grad():
        boundary = model.text.features(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        top = model.text.run_layers(boundary, batch["attention_mask"], top=True)
        whole = model.text.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    token_type_ids=batch["token_type_ids"]).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(top[mask], whole[mask], atol=1e-5, rtol=1e-5)


def test_cached_boundary_states_give_the_logits_of_raw_inputs(sample_dir, tmp_path):
    model = text_model(context=2, finetune=1).eval()
    records = read_manifest(sample_dir, "dev")[:6]
    features = extract_features(model, records, "dev", tmp_path, num_workers=0)
    assert [len(x) for x in features.tensors["text_features"]] == [len(x) for x in features.tensors["token_type_ids"]]
    cached = collate_features([FeatureDataset(features)[i] for i in range(6)])
    raw = model.processor.collate([model.processor(r, i) for i, r in enumerate(records)])
    with torch.no_grad():
        from_cache = model(**model_inputs(cached)).emotion_logits
        from_raw = model(**model_inputs(raw)).emotion_logits
    torch.testing.assert_close(from_cache, from_raw, atol=1e-5, rtol=0)


def test_only_the_top_layers_train_and_the_frozen_ones_never_change():
    model = text_model(finetune=1, pooling="pooler")
    layers = model.text.backbone.encoder.layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("text.backbone.encoder.layer.1.") for n in trainable)
    assert any(n.startswith("text.backbone.pooler.") for n in trainable)
    assert not any(n.startswith(("text.backbone.embeddings.", "text.backbone.encoder.layer.0.")) for n in trainable)
    frozen_before = {k: v.clone() for part in model.text.feature_parts() for k, v in part.state_dict().items()}
    top_before = {k: v.clone() for k, v in layers[1].state_dict().items()}
    model.train()
    assert not layers[0].training and not model.text.backbone.embeddings.training and layers[1].training
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = model.processor.collate([model.processor(Utterance(text=t, emotion="joy", sentiment="positive", path=None), i)
                                     for i, t in enumerate(("so happy", "so sad", "what"))])
    out = model(**model_inputs(batch))
    (out.emotion_logits.logsumexp(1).mean() - out.emotion_logits[:, 0].mean()).backward()
    optimizer.step()
    frozen_after = {k: v for part in model.text.feature_parts() for k, v in part.state_dict().items()}
    assert all(torch.equal(v, frozen_after[k]) for k, v in frozen_before.items())
    assert any(not torch.equal(v, layers[1].state_dict()[k]) for k, v in top_before.items())


def test_a_folder_keeps_the_trained_top_layers_and_names_the_rest(tmp_path):
    torch.manual_seed(0)
    source = text_model().text.backbone
    source.save_pretrained(tmp_path / "encoder")
    text_model().processor.tokenizer.save_pretrained(tmp_path / "encoder")
    torch.manual_seed(1)
    model = EmotionSentimentModel(ModelConfig(text_encoder=str(tmp_path / "encoder"), modalities=("text",), pooling="mean",
                                              finetune_text_layers=1), ProcessorConfig(context=1))
    with torch.no_grad():
        model.text.backbone.encoder.layer[1].output.dense.weight.add_(0.5)  # as training would change it
    folder = model.save_pretrained(tmp_path / "model")
    from safetensors.torch import load_file

    saved = load_file(folder / "model.safetensors")
    assert any(k.startswith("text.backbone.encoder.layer.1.") for k in saved)
    assert not any(k.startswith(("text.backbone.encoder.layer.0.", "text.backbone.embeddings.")) for k in saved)
    assert json.loads((folder / "config.json").read_text())["frozen_encoders"]["text"]["source"] == str((tmp_path / "encoder").resolve())
    loaded = EmotionSentimentModel.from_pretrained(folder)
    u = Utterance(text="really?", emotion=None, sentiment=None, path=None, history=((None, "I won"),))
    batch = model.processor.collate([model.processor(u, 0)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**model_inputs(batch)).emotion_logits, model.eval()(**model_inputs(batch)).emotion_logits,
                                   atol=0, rtol=0)
