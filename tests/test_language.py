"""The language spoken (`--language`): detected or forced by the packaged Whisper-base on real
speech (espeak-ng in English and in French), written in the result, and the text expert of a
late-fusion model abstaining on speech that is not English; a code Whisper does not know refused."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli, spoken_clip
from emosent import EmotionSentimentModel, ModelConfig
from emosent.analyze import analyze
from emosent.fusion import ExpertSpec, FusionConfig, LateFusionModel
from emosent.segments import SegmentsError, check_language_model, load_asr_model, transcribe, whisper_language

ENGLISH = ("Good morning everyone, how are you today?", "The weather is very nice this morning.")
FRENCH = ("Bonjour à tous, comment allez-vous aujourd'hui?", "Il fait très beau ce matin, nous allons au marché.")


def text_and_voice() -> LateFusionModel:
    """A tiny late fusion of a text and a voice expert (random weights: only presence is checked)."""
    torch.manual_seed(0)
    text = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",), finetune_text_layers=1, pooling="mean"))
    voice = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("audio",)))
    specs = {name: ExpertSpec(name) for name in ("text", "voice")}
    return LateFusionModel({"text": text, "voice": voice}, FusionConfig(specs, "mean")).eval()


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    return spoken_clip(tmp_path_factory.mktemp("en"), ENGLISH, 0.5, 0.8, 0.5)[0]


@pytest.fixture(scope="module")
def french(tmp_path_factory):
    return spoken_clip(tmp_path_factory.mktemp("fr"), FRENCH, 0.5, 0.8, 0.5, voice="fr")[0]


def test_english_speech_is_detected_english_with_its_probability(english):
    heard = transcribe(english)
    assert heard.language.code == "en" and heard.language.how == "detected", heard.language
    assert 0.5 < heard.language.probability <= 1.0, heard.language
    assert "morning" in " ".join(s.text for s in heard.segments).lower()


def test_a_forced_language_is_recorded_as_forced_and_the_text_expert_reads(english):
    result = analyze(english, text_and_voice(), asr=True, language="EN", device="cpu")
    assert result["language"] == {"code": "en", "probability": 1.0, "how": "forced"}
    assert all(u["experts"]["text"] is not None for u in result["utterances"]), result["utterances"]
    assert not [w for w in result["warnings"] if "language" in w], result["warnings"]


def test_french_speech_is_detected_and_the_built_in_text_expert_abstains(french, tmp_path):
    out = tmp_path / "fr.json"
    done = run_cli("analyze", french, "--out", out, timeout=300)  # the built-in model, the language detected
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["language"]["code"] == "fr" and result["language"]["how"] == "detected", result["language"]
    assert result["utterances"] and all(u["experts"]["text"] is None and u["experts"]["audio"] is not None
                                        for u in result["utterances"]), result["utterances"]
    (warning,) = [line for line in done.stderr.splitlines() if "English only" in line]
    assert warning.startswith("warning: ") and "'fr'" in warning and "abstains" in warning, warning
    assert "--text-for-other-languages" in warning and "if it is English, pass --language en" in warning, warning


def test_other_languages_can_keep_the_text_expert_when_asked(french, tmp_path):
    subtitles = tmp_path / "fr.srt"  # the user says what language the subtitles are in: no detection
    subtitles.write_text(f"1\n00:00:00,500 --> 00:00:03,000\n{FRENCH[0]}\n", encoding="utf-8")
    kept = analyze(french, text_and_voice(), subtitles=subtitles, language="fr", text_for_other_languages=True, device="cpu")
    assert kept["language"] == {"code": "fr", "probability": 1.0, "how": "forced"}
    assert kept["utterances"][0]["experts"]["text"] is not None
    assert any("used anyway" in w for w in kept["warnings"]), kept["warnings"]
    unknown = analyze(french, text_and_voice(), subtitles=subtitles, device="cpu")  # subtitles, language not given
    assert unknown["language"] is None and unknown["utterances"][0]["experts"]["text"] is not None
    # the service's way: the text expert abstains and the warning names no option (its users have none)
    served = analyze(french, text_and_voice(), subtitles=subtitles, language="fr", option_hints=False, device="cpu")
    (warning,) = [w for w in served["warnings"] if "English only" in w]
    assert served["utterances"][0]["experts"]["text"] is None and "abstains" in warning and "--" not in warning, warning


def test_a_single_network_gets_the_warning_only(french, tmp_path):
    subtitles = tmp_path / "fr.srt"
    subtitles.write_text(f"1\n00:00:00,500 --> 00:00:03,000\n{FRENCH[0]}\n", encoding="utf-8")
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text", "audio"))).eval()
    result = analyze(french, model, subtitles=subtitles, language="fr", device="cpu")
    assert len(result["utterances"]) == 1 and "experts" not in result["utterances"][0]
    (warning,) = [w for w in result["warnings"] if "English" in w]
    assert "reads English text only" in warning and "--text-for-other-languages" not in warning, warning


def test_an_abstaining_text_expert_leaves_the_fusion_to_the_others():
    model = text_and_voice()
    g = torch.Generator().manual_seed(1)
    inputs = {"text_features": torch.randn(2, 5, 32, generator=g), "attention_mask": torch.ones(2, 5, dtype=torch.long),
              "audio_features": torch.randn(2, 128, generator=g), "audio_lengths": torch.tensor([300, 300]),
              "audio_present": torch.tensor([True, True])}
    with torch.no_grad():
        both = model(**inputs)
        without = model(**inputs, text_present=torch.tensor([False, True]))
        voice = model.experts["voice"](**{k: inputs[k] for k in ("audio_features", "audio_lengths", "audio_present")})
    assert without.experts["text"][2].tolist() == [False, True]
    # the first row is the voice expert's own distribution; the second, where text reads, is unchanged
    assert torch.allclose(without.emotion_logits[0], voice.emotion_logits[0].log_softmax(-1), atol=1e-5)
    assert torch.allclose(without.emotion_logits[1], both.emotion_logits[1])
    assert not torch.allclose(without.emotion_logits[0], both.emotion_logits[0])


@pytest.mark.parametrize("code", ["auto", "AUTO", None])
def test_auto_means_detect(code):
    assert whisper_language(code) is None


def test_an_unknown_code_is_refused_naming_the_option_and_the_codes():
    with pytest.raises(SegmentsError, match=r"^--language english: not a language Whisper knows; give auto .* one of "
                                            r"Whisper's codes: af, am, .*\ben\b.*\bfr\b"):
        whisper_language("english")


@pytest.mark.parametrize("command", ["analyze", "predict"])
def test_a_bad_code_on_the_command_line_is_one_line_and_exit_2(command, english, tmp_path):
    args = [english] if command == "analyze" else ["--data", english.parent, "--out", tmp_path / "p.jsonl"]
    done = run_cli(command, *args, "--language", "xx", timeout=120)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"emosent {command}: error: --language xx: not a language Whisper knows"), line


def test_predict_leaves_the_text_expert_out_of_a_french_videos_rows(french, tmp_path, capsys):
    from emosent.predict import predict, read_predictions

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "fr.mp4").symlink_to(french)
    out = tmp_path / "rows.jsonl"
    predict(folder, out, text_and_voice(), num_workers=0, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    rows = read_predictions(out)
    assert rows and all(r["experts"]["text"] is None and r["experts"]["voice"] is not None for r in rows), rows
    (warning,) = [line for line in capsys.readouterr().out.splitlines() if "English only" in line]
    assert "fr.mp4: the speech is in language 'fr' (detected" in warning and "abstains on this video's rows" in warning


def test_an_english_only_speech_model_refuses_another_forced_language():
    """tiny.en and the like transcribe everything as English: a forced French would be recorded as
    French over English words. (No English-only model is stored offline: the rule is checked alone,
    and the packaged model's flag for real.)"""
    assert load_asr_model("base").model.is_multilingual
    check_language_model("base", True, "fr")
    check_language_model("tiny.en", False, "en")
    check_language_model("tiny.en", False, None)  # detection: an English-only model reports English
    with pytest.raises(SegmentsError, match=r"^--language fr: the speech recognition model tiny.en transcribes English "
                                            r"only; give --asr-model a multilingual one \(e.g. base, the packaged one\) "
                                            r"or --language en$"):
        check_language_model("tiny.en", False, "fr")
