"""The media and data pipeline: manifests, clips, datasets and batches."""

from emosent.data.dataset import Collator, SkipCounter, UtteranceDataset
from emosent.data.manifest import ManifestError, Utterance, read_manifest
from emosent.data.media import Clip, MediaError, load_clip

__all__ = [
    "Clip",
    "Collator",
    "ManifestError",
    "MediaError",
    "SkipCounter",
    "Utterance",
    "UtteranceDataset",
    "load_clip",
    "read_manifest",
]
