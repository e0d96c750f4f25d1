"""emosent: emotion and sentiment recognition in video."""

from emosent.config import ModelConfig
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.model import EmotionSentimentModel, EmotionSentimentOutput

__all__ = ["EMOTIONS", "SENTIMENTS", "EmotionSentimentModel", "EmotionSentimentOutput", "ModelConfig"]
__version__ = "0.1.0"
