"""The media and data pipeline: manifests, clips, datasets and batches."""

from emosent.data.dataset import SkipCounter, UtteranceDataset
from emosent.data.manifest import ManifestError, Utterance, read_manifest
from emosent.data.media import Clip, MediaError, MediaInfo, load_clip, probe

__all__ = [
    "Clip",
    "ManifestError",
    "MediaError",
    "MediaInfo",
    "SkipCounter",
    "Utterance",
    "UtteranceDataset",
    "load_clip",
    "probe",
    "read_manifest",
]
