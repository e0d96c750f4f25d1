"""The multimodal network of ../shared/design/model-design.md, read top-down.

Three encoders (text, video, audio), each a frozen part followed by a trainable head that maps
to `feature_dim`; concatenation; a fusion block; one head per task. Each encoder is built by name
from `emosent.registry` (the encoders themselves live in `emosent.encoders`) and exposes its
frozen part as `features(...)` and its trainable part as `head(...)`, so cached frozen outputs
(see `emosent.features`) flow through exactly the same trainable layers as raw inputs.

Letters: B batch, T frames, L tokens, M mel bins, F spectrogram frames, H text hidden width.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file
from torch import nn

from emosent.config import WHISPER_LAYERS, ModelConfig, ProcessorConfig
from emosent.data.face_tracks import FACE_FACTS
from emosent.encoders.base import NamedWeights
from emosent.encoders.weights import weights_digest
from emosent.files import write_atomically
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.pretrained import (
    CONFIG_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    PretrainedModel,
    check_finite,
    load_named_encoder,
    read_model_config,
    state_keys,
    write_config,
)
from emosent.processor import Processor, load_tokenizer, read_processor_config
from emosent.registry import encoder_spec, text_defaults


def classifier(in_dim: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


@dataclass
class EmotionSentimentOutput:
    """emotion_logits: (B, 7) in `emosent.labels.EMOTIONS` order; sentiment_logits: (B, 3) in SENTIMENTS order.
    experts (late fusion only): every expert -> (emotion (B, 7), sentiment (B, 3) calibrated
    log-probabilities, present (B,) bool); an expert that abstained on a row has present False."""

    emotion_logits: torch.Tensor
    sentiment_logits: torch.Tensor
    experts: dict | None = None
    present: torch.Tensor | None = None  # (B,) bool: False where the model abstained (it lacked its input)


# Keyword arguments of `forward` per modality: raw inputs (each encoder takes those of its
# `inputs`), and the cached output of the frozen part.
RAW_INPUTS = {"text": ("input_ids", "attention_mask"), "video": ("video", "faces", "face_mask"), "audio": ("audio",)}
FEATURE_INPUTS = {"text": "text_features", "video": "video_features", "audio": "audio_features"}
# token_type_ids: text with dialogue context (0 the utterance, 1 its context); audio_lengths: the
# real frames of each clip's log-mel, for masked audio pooling
# video_present / audio_present: whether each clip has the stream at all (the processor's masks)
OPTIONAL_INPUTS = ("token_type_ids", "audio_lengths", "video_present", "audio_present")
INPUT_NAMES = (*(n for names in RAW_INPUTS.values() for n in names), *OPTIONAL_INPUTS, *FEATURE_INPUTS.values())
# every input of one modality, raw, cached and its mask: what a late fusion hands the expert of that modality
MODALITY_INPUTS = {"text": ("input_ids", "attention_mask", "token_type_ids", "text_features"),
                   "video": ("video", "faces", "face_mask", "video_features", "video_present"),
                   "audio": ("audio", "audio_lengths", "audio_features", "audio_present")}


def face_facts(batch: dict) -> dict[str, torch.Tensor]:
    """The batch's per-clip face facts (FACE_FACTS: how many faces, which one was read),
    which a model's `encode` keeps with its video features for the record to report."""
    return {k: batch[k] for k in FACE_FACTS if batch.get(k) is not None}


def model_inputs(batch: dict) -> dict:
    """The entries of a batch that `EmotionSentimentModel.forward` takes (labels and the rest left out)."""
    return {k: batch[k] for k in INPUT_NAMES if k in batch}


class EmotionSentimentModel(PretrainedModel):
    """Text, video and audio encoders -> concat (B, 128 * modalities) -> fusion (B, 256) -> two heads.

    `self.processor` turns utterances into this model's inputs (see `emosent.processor`). A model
    of one media modality (an expert: audio only, say) abstains where its stream is absent
    (`EmotionSentimentOutput.present`); a model over several reads missing audio as silence and
    needs a video stream where it reads video."""

    model_type = "multimodal"

    def __init__(self, config: ModelConfig, processor_config: ProcessorConfig = ProcessorConfig(), *,
                 pretrained: bool | tuple[str, ...] = True, text_source: str | Path | None = None, tokenizer=None):
        """pretrained: load the frozen encoders' weights by their names (True: every modality; a
        tuple: those modalities; False: the architecture only, no downloads, for `from_pretrained`).
        text_source: a directory with the text backbone's config (and tokenizer) when its weights
        are not loaded by name. tokenizer: use this one rather than the text encoder's own."""
        super().__init__()
        if config.pooling is None:  # the text encoder's recommended pooling, saved as chosen
            config = replace(config, pooling=text_defaults(config.text_encoder)["pooling"])
        self.config = config
        by_name = set(config.modalities if pretrained is True else pretrained or ())
        for modality in config.modalities:
            build = encoder_spec(modality, config.encoder(modality)).builder()
            setattr(self, modality, build(config, processor_config, pretrained=modality in by_name, source=text_source))
        if "text" in config.modalities:
            tokenizer = tokenizer or self.text.tokenizer
        d = config.feature_dim
        self.processor = Processor(processor_config, config.modalities, tokenizer if "text" in config.modalities else None,
                                   config.video_encoder, config.audio_encoder)
        if config.audio_head == "linear":
            # A voice expert as a multinomial logistic regression on its standardised features (the
            # audio encoder's head only z-scores them): on new speakers and sentences it beats the
            # MLP below, which overfits RAVDESS's (bench/voice.py, BENCHMARKS.md "A linear head").
            self.fusion = nn.Identity()
            self.emotion_head = nn.Linear(self.audio.feature_width, len(EMOTIONS))
            self.sentiment_head = nn.Linear(self.audio.feature_width, len(SENTIMENTS))
        else:
            self.fusion = nn.Sequential(
                nn.Linear(d * len(config.modalities), config.fusion_dim),
                nn.BatchNorm1d(config.fusion_dim),
                nn.ReLU(),
                nn.Dropout(config.fusion_dropout),
            )
            self.emotion_head = classifier(config.fusion_dim, config.head_dim, len(EMOTIONS), config.head_dropout)
            self.sentiment_head = classifier(config.fusion_dim, config.head_dim, len(SENTIMENTS), config.head_dropout)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def encoders(self) -> dict[str, nn.Module]:
        return {m: getattr(self, m) for m in self.config.modalities}

    def feature_modules(self) -> list[nn.Module]:
        """Each encoder's part before its head: what `encode` runs, frozen and cacheable."""
        return [part for enc in self.encoders.values() for part in enc.feature_parts()]

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules whose parameters are all frozen: they stay in eval mode (see `train`)."""
        return [m for m in self.feature_modules() if not any(p.requires_grad for p in m.parameters())]

    def frozen_state_keys(self) -> set[str]:
        """state_dict keys of the frozen modules (weights and BatchNorm statistics)."""
        return state_keys(self, self.frozen_modules())

    def trains_encoder_internals(self) -> bool:
        """True when part of an encoder before its head is trainable: frozen outputs cannot be cached."""
        return any(p.requires_grad for m in self.feature_modules() for p in m.parameters())

    def train(self, mode: bool = True) -> EmotionSentimentModel:
        # The tutorial this design comes from froze weights with requires_grad=False only, so in
        # train mode the frozen BatchNorm layers still updated their running statistics and BERT's
        # dropout stayed on. Frozen parts here always run in eval mode.
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def encode(self, batch: dict, modalities: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """A batch of raw inputs (as `self.processor.collate` makes them) -> the outputs of each
        encoder's part before its head, keyed as `forward`'s *_features arguments: text_features
        (B, H), video_features (B, 512), audio_features (B, 128) (or the log-mel (B, 1, M, F) when
        the audio convolutions train) with audio_lengths (B,). The one path from inputs to
        features, for training, extraction, evaluation and analysis; checks the inputs first."""
        out = {}
        for modality in self.config.modalities if modalities is None else modalities:
            names = self.encoders[modality].inputs
            raw = {name: batch.get(name) for name in names}
            if any(x is None for x in raw.values()):
                raise ValueError(f"the model uses {modality}: pass {' and '.join(names)} or {FEATURE_INPUTS[modality]}")
            self.processor.check_inputs(modality, raw)
            if modality == "text":
                raw["token_type_ids"] = batch.get("token_type_ids")
            if modality == "audio":
                raw["lengths"] = out["audio_lengths"] = self.processor.audio_lengths(batch)
            out[FEATURE_INPUTS[modality]] = self.encoders[modality].features(**raw)
            if batch.get(f"{modality}_present") is not None:  # kept with the features: abstention is decided from it
                out[f"{modality}_present"] = batch[f"{modality}_present"]
            if modality == "video":
                out.update(face_facts(batch))
        return out

    def forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        faces: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        video_present: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        faces_in_frame: torch.Tensor | None = None,
        face_choice: torch.Tensor | None = None,
    ) -> EmotionSentimentOutput:
        """Each modality of the config takes either its raw inputs or its cached frozen features:
        input_ids, attention_mask (B, L) long, token_type_ids (B, L) with context | text_features
        (B, H), or (B, L, H) with attention_mask (and token_type_ids) when the top text layers train;
        video (B, T, 3, S, S) float and/or faces (B, T, 1, 64, 64) float with face_mask (B, T) bool,
        as the video encoder takes them | video_features (B, 512 and/or 136);
        audio (B, 1, M, F) float | audio_features (B, 128), or the log-mel (B, 1, M, F) when the audio
        convolutions train; audio_lengths (B,) long, each clip's real frames (needed by masked pooling);
        video_present, audio_present (B,) bool: whether each clip has the stream (see `present_mask`);
        faces_in_frame, face_choice: what `encode` passes along for the record (`face_facts`), not read."""
        given = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, video=video, faces=faces,
                     face_mask=face_mask, audio=audio, audio_lengths=audio_lengths, text_features=text_features,
                     video_features=video_features, audio_features=audio_features)
        raw = tuple(m for m in self.config.modalities if given[FEATURE_INPUTS[m]] is None)
        features = {**{k: v for k, v in given.items() if k in FEATURE_INPUTS.values()}, **self.encode(given, raw)}
        parts = []
        for modality, encoder in self.encoders.items():
            extra = {"text": (attention_mask, token_type_ids), "audio": (features.get("audio_lengths", audio_lengths),)}.get(modality, ())
            parts.append(encoder.head(features[FEATURE_INPUTS[modality]], *extra))  # (B, feature_dim)
        fused = self.fusion(torch.cat(parts, dim=1))  # (B, feature_dim * modalities) -> (B, fusion_dim)
        emotion = self.emotion_head(fused)
        present = self.present_mask(len(emotion), emotion.device, video_present=video_present, audio_present=audio_present)
        return EmotionSentimentOutput(emotion, self.sentiment_head(fused), present=present)

    def present_mask(self, b: int, device, **streams: torch.Tensor | None) -> torch.Tensor:
        """(B,) bool: where this model has what it reads. A model of one media stream (an audio
        expert) abstains without it; text is always there (empty text is skipped earlier); a
        model of several modalities cannot leave one out, so it always answers."""
        present = torch.ones(b, dtype=torch.bool, device=device)
        media = [m for m in self.config.modalities if m != "text"]
        if self.config.modalities == tuple(media[:1]) and streams.get(f"{media[0]}_present") is not None:
            present = streams[f"{media[0]}_present"].to(device=device, dtype=torch.bool)
        return present

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def frozen_spec(self) -> dict:
        """What, besides the processor and the frozen weights, changes the frozen outputs (the
        feature cache's key)."""
        c = self.config
        return {"pooling": c.pooling if "text" in c.modalities else None,
                **({"audio": [c.audio_encoder, c.audio_pooling, c.train_audio_conv,
                              *((c.audio_layer, c.audio_norm) if (c.audio_layer, c.audio_norm) != (WHISPER_LAYERS, "none") else ())]}
                   if "audio" in c.modalities else {})}

    def named_weights(self) -> dict[str, NamedWeights]:
        """The frozen weights that a name rebuilds wherever the model is loaded (registry names, hub
        ids, folders and files), by config.json's frozen_encoders key: "text" (the text encoder's
        frozen part), "video" (R3D-18), "face" (the FER2013 network), "audio" (Whisper-base)."""
        return {key: named for encoder in self.encoders.values() for key, named in encoder.named_weights().items()}

    def by_name(self) -> dict[str, dict]:
        """config.json's frozen_encoders: key -> {"source", "sha256"} (see `named_weights`)."""
        return {key: {"source": named.source, "sha256": named.sha256 or weights_digest(named.modules)}
                for key, named in self.named_weights().items()}

    def save_pretrained(self, directory: str | Path, *, include_frozen: bool = False) -> Path:
        """Write config.json (config, label names and the frozen encoders it names, with their
        sha256), processor.json with the tokenizer, and model.safetensors: what training changed
        (trainable weights, BatchNorm statistics) and the frozen parts that no name rebuilds (random
        ones). The frozen encoders named in config.json are left out (PEFT-style) unless
        include_frozen, which writes a folder that needs nothing else."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        named, refs = self.named_weights(), self.by_name()
        for key, ref in refs.items():
            ref["in_folder"] = include_frozen and bool(named[key].modules)  # Whisper-base is not a torch module: always by name
        # the named encoders' frozen parts; layers that training changed (--finetune-text-layers) stay in
        left_out = set() if include_frozen else state_keys(self, [p for ref in named.values() for p in ref.modules])
        write_config(directory, self.model_type, {"model_config": self.config.to_dict(), "frozen_encoders": refs})
        self.processor.save_pretrained(directory)
        if "text" in self.config.modalities:
            self.text.backbone.config.save_pretrained(directory / TOKENIZER_DIR)
        # clone: tensors that share memory cannot be saved as they are; write_atomically: safetensors
        # writes mode 0600, and a model folder is meant to be shared
        tensors = {k: v.detach().clone().contiguous() for k, v in self.state_dict().items() if k not in left_out}
        write_atomically(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> EmotionSentimentModel:
        """Rebuild a model written by `save_pretrained`, in eval mode: frozen encoders named in
        config.json are loaded by name and must match their sha256. A folder that is not one
        (missing, truncated or edited files), or a named encoder that is missing or different here,
        raises ValueError or FileNotFoundError in one line naming the file and what to do."""
        directory = Path(directory)
        config, meta = read_model_config(directory)
        legacy = "format" not in meta  # written before processor.json: everything is in the folder
        processor_config = (ProcessorConfig(n_mels=meta["model_config"].get("n_mels", 64)) if legacy
                            else read_processor_config(directory))
        refs = {} if legacy else meta.get("frozen_encoders") or {}
        by_name = [m for m, ref in refs.items() if not ref.get("in_folder")]
        tokenizer = load_tokenizer(directory) if "text" in config.modalities else None
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: the model folder is incomplete; copy the whole folder written by emosent train")
        text_dir = directory / TOKENIZER_DIR
        try:  # the architecture only: the text backbone from its saved config
            model = cls(config, processor_config, pretrained=False, text_source=text_dir, tokenizer=tokenizer)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{text_dir}: cannot rebuild the text encoder from its config "
                             f"({err.__class__.__name__}: {str(err)[:200]}); copy the folder again") from None
        for key in by_name:  # first: trained layers inside a named encoder come from the file below
            load_named_encoder(model, key, refs[key], directory / CONFIG_FILE)
        try:
            missing, unexpected = load_model(model, str(weights), strict=False)
        except SafetensorError as err:
            raise ValueError(f"{weights}: not a readable safetensors file ({err}); it is truncated or corrupt: copy it again") from None
        except RuntimeError as err:  # other shapes than config.json says
            raise ValueError(f"{weights}: its tensors do not match {directory / CONFIG_FILE} ({str(err).splitlines()[0][:200]}); "
                             "the two files come from different models") from None
        check_finite(model.state_dict(), weights)
        named = model.named_weights()
        missing = set(missing) - state_keys(model, [p for key in by_name for p in named[key].modules])
        if missing or unexpected:
            example = sorted(missing or unexpected)[0]
            raise ValueError(f"{weights}: its tensors do not match {directory / CONFIG_FILE} ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, e.g. {example}); the two files come from different models")
        return model.eval()
