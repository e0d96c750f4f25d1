"""All preprocessing in one place: an utterance -> an item -> a batch, for training, feature
extraction, `analyze` and serving alike (after transformers' processors: a tokenizer and a feature
extractor, saved beside the model).

A `Processor` is a `ProcessorConfig` (frames, frame size and transforms, audio rate, mel bands,
FFT window, hop, audio window, token limit) plus the text encoder's tokenizer, for the model's
modalities. `save_pretrained` writes processor.json and the tokenizer's files; the model folder's
`from_pretrained` reads them back, so a model always receives what it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emosent.config import ProcessorConfig, read_json_object
from emosent.data.manifest import Utterance
from emosent.data.face_tracks import FACE_CHOICES, FACE_FACTS, NO_CHOICE
from emosent.data.faces import FACE_SIZE, RGB_CROP_SIZE, no_faces, read_faces
from emosent.data.media import AUDIO_INPUTS, MEDIA_MODALITIES, MediaError, load_clip
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.pretrained import PROCESSOR_FILE, TOKENIZER_DIR, TOKENIZER_FILES, require_parts
from emosent.registry import encoder_spec


class Processor:
    """processor(utterance) -> item; processor.collate(items) -> batch.

    An item holds "text", "video" (T, 3, S, S) and "audio" (1, M, F) for the modalities asked
    (with a face encoder, "faces" (T, 1, 64, 64), or with face_rgb (T, 3, 128, 128) RGB in 0..255
    for the face expert's networks, "face_mask" (T,) and FACE_FACTS for video, beside or instead of "video"), and the labels when the utterance has them; one that cannot be read is {"index", "skip": reason,
    "error": message}, dropped and counted by `collate`, never fatal.
    """

    def __init__(self, config: ProcessorConfig, modalities: tuple[str, ...], tokenizer=None, video_encoder: str = "r3d18",
                 audio_encoder: str = "cnn", video_optional: bool = False, face_rgb: bool = False):
        if not modalities:
            raise ValueError("modalities must be a non-empty subset of ('text', 'video', 'audio')")
        if "text" in modalities and tokenizer is None:
            raise ValueError("a processor for text needs the text encoder's tokenizer")
        self.config, self.modalities, self.tokenizer = config, tuple(modalities), tokenizer
        self.video_encoder, self.audio_encoder = video_encoder, audio_encoder
        # a model whose video reader abstains without a video stream (late fusion) reads a file
        # without one (a call recording) with video_present False; any other skips it
        self.video_optional = video_optional
        self.face_rgb = face_rgb  # colour crops at 128 (emosent.encoders.faces) instead of grey at 64
        # what load_clip reads, as the encoders' registry entries say: whole frames for R3D-18, the
        # decoded frames for face crops, the audio input of the audio encoder (see AUDIO_INPUTS)
        inputs = encoder_spec("audio", audio_encoder).inputs
        if len(audio_inputs := [i for i in inputs if i in AUDIO_INPUTS]) != 1:
            raise ValueError(f"audio encoder {audio_encoder!r}: its registry entry must read one audio input of "
                             f"{tuple(AUDIO_INPUTS)}, not {inputs}")
        self.audio_input = audio_inputs[0]
        self.media = (*(encoder_spec("video", video_encoder).inputs if "video" in modalities else ()),
                      *((self.audio_input,) if "audio" in modalities else ()))
        rate = AUDIO_INPUTS[self.audio_input].sample_rate_hz
        if "audio" in modalities and rate is not None and config.sample_rate_hz != rate:
            raise ValueError(f"--audio-encoder {audio_encoder} reads {rate // 1000} kHz audio: leave --sample-rate-hz at {rate}, "
                             f"not {config.sample_rate_hz}")

    def __call__(self, utterance: Utterance, index: int = 0) -> dict:
        u = utterance
        item = {"index": index}
        if u.emotion is not None:
            item.update(emotion=EMOTIONS.index(u.emotion), sentiment=SENTIMENTS.index(u.sentiment))
        if "text" in self.modalities:
            if not u.text:
                return {"index": index, "skip": "empty text", "error": f"{u.source}: the utterance text is empty"}
            item["text"] = u.text
            if self.config.context:
                item["context"] = self.context_of(u)
        if self.media:
            if u.path is None:
                return {"index": index, "skip": "no media path", "error": f"{u.source}: no media file given"}
            try:
                clip = self.load(u)
            except MediaError as err:
                return {"index": index, "skip": err.reason, "error": f"{u.source}: {err}"}
            # one rule for a missing stream: every input is there, with a mask saying what the file held
            if "video" in self.modalities:
                item["video_present"] = clip.video is not None or clip.frames is not None
            if "video" in self.media:
                item["video"] = clip.video if clip.video is not None else torch.zeros(
                    self.config.num_frames, 3, self.config.frame_size, self.config.frame_size)
            if clip.frames is not None:
                item["faces"], item["face_mask"], pick = read_faces(clip.frames, self.config.face_margin,
                                                                    self.config.face_detect_size, rgb=self.face_rgb)
                item["faces_in_frame"] = pick.count
                item["face_choice"] = FACE_CHOICES.index(pick.choice) if pick.choice else NO_CHOICE
            elif "frames" in self.media:  # no video stream: no face seen
                item["faces"], item["face_mask"] = no_faces(self.config.num_frames, self.face_rgb)
                item["faces_in_frame"], item["face_choice"] = 0, NO_CHOICE
            if "audio" in self.modalities:
                item["audio"], item["audio_length"] = clip.audio, clip.audio_frames
                item["audio_present"] = clip.has_audio
        return item

    def load(self, u: Utterance):
        try:
            return load_clip(u.path, u.start, u.end, modalities=self.media, settings=self.config)
        except MediaError as err:
            if not (self.video_optional and err.reason == "no video stream"):
                raise
        return load_clip(u.path, u.start, u.end, modalities=tuple(m for m in self.media if m not in ("video", "frames")),
                         settings=self.config)

    def collate(self, items: list[dict]) -> dict:
        """Items -> a batch: input_ids and attention_mask (B, L) padded to the batch's longest (at
        most max_tokens), video (B, T, 3, S, S), faces (B, T, 1, 64, 64) and face_mask (B, T), audio
        (B, 1, M, F) with audio_lengths (B,) long (its frames that hold real audio, the rest being
        padding), video_present and audio_present (B,) bool (the file had the stream), emotion and
        sentiment (B,) when every item has labels, faces_in_frame and face_choice (B,) long, index (B,), and the dropped items' (index, reason, error)
        under "skipped"."""
        good = [it for it in items if "skip" not in it]
        batch: dict = {"skipped": [(it["index"], it["skip"], it["error"]) for it in items if "skip" in it]}
        batch["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
        for label in ("emotion", "sentiment"):
            if all(label in it for it in good):
                batch[label] = torch.tensor([it[label] for it in good], dtype=torch.long)
        if not good:
            return batch
        if "text" in good[0]:
            texts = [it["text"] for it in good]
            if self.config.context:
                # a pair: [CLS] utterance [SEP] context [SEP], token_type_ids 0 then 1; the longer part is
                # cut first, and the context from its end, which holds its oldest utterance
                tokens = self.tokenizer(texts, [it["context"] for it in good], truncation="longest_first",
                                        max_length=self.config.max_tokens, padding="longest", return_tensors="pt",
                                        return_token_type_ids=True)
                batch["token_type_ids"] = tokens["token_type_ids"]
                if "token_type_ids" not in self.tokenizer.model_input_names:  # MPNet: no segments, all 0
                    batch["token_type_ids"] = segments(tokens)
            else:
                tokens = self.tokenizer(texts, truncation=True, max_length=self.config.max_tokens, padding="longest",
                                        return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        for m in (*MEDIA_MODALITIES, "faces", "face_mask"):
            if m in good[0]:
                batch[m] = torch.stack([it[m] for it in good])
        for fact in FACE_FACTS:
            if fact in good[0]:
                batch[fact] = torch.tensor([it[fact] for it in good], dtype=torch.long)
        if "audio" in good[0]:
            batch["audio_lengths"] = torch.tensor([it["audio_length"] for it in good], dtype=torch.long)
        for stream in ("video_present", "audio_present"):
            if stream in good[0]:
                batch[stream] = torch.tensor([it[stream] for it in good], dtype=torch.bool)
        return batch

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        """(1, M, F) of one clip's audio input: the log-mel of the settings, or Whisper's own."""
        return 1, *AUDIO_INPUTS[self.audio_input].shape(self.config)

    def check_inputs(self, modality: str, tensors: dict[str, torch.Tensor]) -> None:
        """Clear errors at the model's public boundary instead of a shape error deep inside a
        backbone, and inputs that another preprocessing made (train/serve skew) refused."""
        if modality == "text":
            ids, mask = tensors["input_ids"], tensors["attention_mask"]
            if ids.dim() != 2 or mask.shape != ids.shape:
                raise ValueError(f"input_ids and attention_mask must both be (B, L), got {tuple(ids.shape)} and {tuple(mask.shape)}")
        t, s = self.config.num_frames, self.config.frame_size
        x = tensors.get("video")
        if x is not None and (x.dim() != 5 or tuple(x.shape[1:]) != (t, 3, s, s)):
            raise ValueError(f"video must be (B, {t}, 3, {s}, {s}) as this model's processor makes it, got {tuple(x.shape)}")
        faces, mask = tensors.get("faces"), tensors.get("face_mask")
        c, side = (3, RGB_CROP_SIZE) if self.face_rgb else (1, FACE_SIZE)
        if faces is not None and (faces.dim() != 5 or tuple(faces.shape[1:]) != (t, c, side, side)
                                  or tuple(mask.shape) != tuple(faces.shape[:2])):
            raise ValueError(f"faces must be (B, {t}, {c}, {side}, {side}) and face_mask (B, {t}) as this model's "
                             f"processor makes them, got {tuple(faces.shape)} and {tuple(mask.shape)}")
        _, m, f = self.audio_shape
        x = tensors.get("audio")
        if modality == "audio" and (x.dim() != 4 or tuple(x.shape[1:]) != (1, m, f)):
            raise ValueError(f"audio must be (B, 1, {m}, {f}) as this model's processor makes it, got {tuple(x.shape)}")

    def audio_lengths(self, batch: dict) -> torch.Tensor | None:
        """A batch's audio_lengths, checked: (B,) whole numbers in 0..F; None when it has none."""
        lengths, audio, f = batch.get("audio_lengths"), batch["audio"], self.audio_shape[-1]
        if lengths is None:
            return None
        if lengths.shape != audio.shape[:1] or lengths.is_floating_point() or lengths.min() < 0 or lengths.max() > f:
            raise ValueError(f"audio_lengths must be ({len(audio)},) whole numbers of real frames in 0..{f}, "
                             f"got {tuple(lengths.shape)} {lengths.dtype}")
        return lengths

    def context_of(self, utterance: Utterance) -> str:
        """The last `context` utterances before this one in its dialogue, most recent first, each
        as "speaker: text" (the text alone where the speaker is unknown), between the tokenizer's
        separators. Empty for the first utterance of a dialogue."""
        recent = utterance.history[::-1][: self.config.context]
        sep = f" {self.tokenizer.sep_token} " if getattr(self.tokenizer, "sep_token", None) else " | "
        return sep.join(f"{speaker}: {text}" if speaker else text for speaker, text in recent)

    def text_input(self, utterance: Utterance) -> list[str]:
        """The text this processor gives the encoder for `utterance` (for cache keys)."""
        return [utterance.text, self.context_of(utterance)] if self.config.context else [utterance.text]

    def fingerprint(self) -> dict:
        """What changes the model's inputs, for the feature cache's key."""
        tokenizer = None
        if self.tokenizer is not None:  # the vocabulary and the normalisation, not the object's identity
            tokenizer = [type(self.tokenizer).__name__, self.tokenizer.vocab_size, self.tokenizer.init_kwargs.get("do_lower_case")]
        out = {"config": self.config.to_dict(), "modalities": list(self.modalities), "tokenizer": tokenizer,
               "video_encoder": self.video_encoder, "audio_encoder": self.audio_encoder}
        return {**out, "face_rgb": True} if self.face_rgb else out  # grey crops keep their cached features' keys

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        meta = {"processor_config": self.config.to_dict(), "tokenizer": TOKENIZER_DIR if self.tokenizer is not None else None}
        (directory / PROCESSOR_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)


def read_processor_config(directory: Path) -> ProcessorConfig:
    """The checked ProcessorConfig of a model folder's processor.json."""
    path = directory / PROCESSOR_FILE
    require_parts(directory, PROCESSOR_FILE)
    meta = read_json_object(path, "processor_config")
    return ProcessorConfig.from_dict(meta["processor_config"], f"{path}: processor_config")


def segments(tokens) -> torch.Tensor:
    """(B, L) 0 for the first text of each pair, 1 from the second's first token on, as BERT's
    token_type_ids mark them, for a tokenizer whose model has no segments (MPNet's gives all 0):
    what mean pooling reads to average the utterance alone. Only the model reads them, never its
    embeddings (MPNet has no segment embedding)."""
    out = torch.zeros_like(tokens["input_ids"])
    for i in range(len(out)):
        second = tokens.sequence_ids(i).index(1) if 1 in tokens.sequence_ids(i) else len(out[i])
        out[i, second:] = 1
    return out


def load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    path = directory / TOKENIZER_DIR
    require_parts(directory, TOKENIZER_DIR, *(f"{TOKENIZER_DIR}/{name}" for name in TOKENIZER_FILES))
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot load the tokenizer ({err.__class__.__name__}: {str(err)[:200]}); copy the folder again") from None
