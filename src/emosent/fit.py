"""Fitting a late fusion on labelled data, with its experts frozen: `fuse` builds one from expert
folders (how tools/build_builtin.py makes the built-in model), `adapt` re-fits one on a user's own
labelled clips (`emosent train --from builtin --data MINE`).

What is fitted, from each expert's own (uncalibrated) outputs on the data:
* a temperature per expert (its calibration), on its own labelled data where it has some
  (`calibrate`: MELD dev for a text expert, RAVDESS dev for a voice expert), by the negative
  log-likelihood of its own predictions;
* on data with every stream (`data`): the experts' weights (>= 0), their temperatures, and a
  per-class bias of the fused log-probabilities (the domain's class priors), by the negative
  log-likelihood of the fused prediction, with an L2 pull towards the starting point
  (weights 1, temperatures as calibrated, biases 0) so that a few hundred clips cannot run away
  with it. The experts' networks, heads included, are not changed.

Letters: N rows, E experts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from emosent.builtin import BUILTIN_DIR, BUILTIN_NAME, load_model
from emosent.data import read_manifest
from emosent.features import FeatureDataset, collate_features, extract_features
from emosent.runtime import log
from emosent.files import write_atomically
from emosent.fusion import FUSION_RULES, ExpertSpec, FusionConfig, LateFusionModel
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.metrics import TASKS
from emosent.model import model_inputs
from emosent.pretrained import PretrainedModel

FIT_STEPS = 300
FIT_LR = 0.05
PULL = 1.0  # strength of the L2 pull towards the starting point, per row of data: PULL / N


def expert_by_name(value: str | Path | PretrainedModel) -> PretrainedModel:
    """An expert: a loaded model, a model folder, or "builtin:NAME" (an expert of the built-in model)."""
    if isinstance(value, PretrainedModel):
        return value
    text = str(value)
    if text.startswith(f"{BUILTIN_NAME}:"):
        folder = BUILTIN_DIR / text.split(":", 1)[1]
        if not folder.is_dir():
            names = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir())
            raise ValueError(f"{text}: the built-in model has no such expert; choose one of {', '.join(names)}")
        return load_model(folder)
    return load_model(Path(text))


@torch.no_grad()
def expert_outputs(model: LateFusionModel, data: str | Path, split: str, cache_dir: Path | None) -> tuple[dict, dict]:
    """Each expert's uncalibrated logits and presence on `split` of `data`, from cached frozen
    features: ({expert: (emotion (N, 7), sentiment (N, 3), present (N,))}, {task: labels (N,)})."""
    features = extract_features(model, read_manifest(data, split), split, cache_dir)
    if not len(features):
        raise ValueError(f"{data}: no usable {split} clip to fit on: {features.skipped.summary()}")
    chunks: dict = {}
    for batch in DataLoader(FeatureDataset(features), batch_size=256, collate_fn=collate_features):
        for name, out in model.expert_outputs(**model_inputs(batch)).items():
            chunks.setdefault(name, []).append((out.emotion_logits, out.sentiment_logits, out.present))
    outputs = {name: tuple(torch.cat(part) for part in zip(*parts)) for name, parts in chunks.items()}
    return outputs, {task: features.tensors[task] for task in TASKS}


@torch.no_grad()
def one_expert_outputs(expert: PretrainedModel, data: str | Path, split: str, cache_dir: Path | None) -> tuple[dict, dict]:
    """An expert's logits on its own labelled data, as (emotion, sentiment, present) and labels."""
    features = extract_features(expert, read_manifest(data, split), split, cache_dir)
    if not len(features):
        raise ValueError(f"{data}: no usable {split} clip to calibrate on: {features.skipped.summary()}")
    parts = []
    for batch in DataLoader(FeatureDataset(features), batch_size=256, collate_fn=collate_features):
        out = expert(**model_inputs(batch))
        present = out.present if out.present is not None else torch.ones(len(out.emotion_logits), dtype=torch.bool)
        parts.append((out.emotion_logits, out.sentiment_logits, present))
    return tuple(torch.cat(p) for p in zip(*parts)), {task: features.tensors[task] for task in TASKS}


def fit_temperature(logits: tuple, labels: dict) -> float:
    """The temperature minimising the negative log-likelihood of both tasks on the rows present."""
    emotion, sentiment, present = logits
    if not bool(present.any()):
        raise ValueError("the expert abstained on every calibration row; give data it can read")
    log_t = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def loss():
        optimiser.zero_grad()
        value = (F.cross_entropy(emotion[present] / log_t.exp(), labels["emotion"][present])
                 + F.cross_entropy(sentiment[present] / log_t.exp(), labels["sentiment"][present]))
        value.backward()
        return value

    optimiser.step(loss)
    return round(float(log_t.detach().exp()), 4)


def fit_fusion(model: LateFusionModel, outputs: dict, labels: dict, *, steps: int = FIT_STEPS) -> FusionConfig:
    """The experts' weights and temperatures and the per-class biases that minimise the fused
    prediction's negative log-likelihood on `outputs` (see the module docstring)."""
    from emosent.model import EmotionSentimentOutput

    names = list(outputs)
    start = {n: (model.config.experts[n].temperature, model.config.experts[n].weight) for n in names}
    log_t = torch.tensor([float(torch.tensor(start[n][0]).log()) for n in names], requires_grad=True)
    log_w = torch.tensor([float(torch.tensor(max(start[n][1], 1e-3)).log()) for n in names], requires_grad=True)
    biases = (torch.zeros(len(EMOTIONS), requires_grad=True), torch.zeros(len(SENTIMENTS), requires_grad=True))
    t0, w0 = log_t.detach().clone(), log_w.detach().clone()
    outs = {n: EmotionSentimentOutput(e, s, present=p) for n, (e, s, p) in outputs.items()}
    rows = len(labels["emotion"])
    optimiser = torch.optim.Adam([log_t, log_w, *biases], lr=FIT_LR)
    for _ in range(steps):
        optimiser.zero_grad()
        fused = model.fuse(outs, temperatures={n: log_t[i].exp() for i, n in enumerate(names)},
                           weights={n: log_w[i].exp() for i, n in enumerate(names)}, biases=biases)
        nll = F.nll_loss(fused.emotion_logits, labels["emotion"]) + F.nll_loss(fused.sentiment_logits, labels["sentiment"])
        pull = ((log_t - t0) ** 2).sum() + ((log_w - w0) ** 2).sum() + sum((b ** 2).sum() for b in biases)
        (nll + PULL / rows * pull).backward()
        optimiser.step()
    experts = {n: replace(model.config.experts[n], temperature=round(float(log_t[i].detach().exp()), 4),
                          weight=round(float(log_w[i].detach().exp()), 4)) for i, n in enumerate(names)}
    return replace(model.config, experts=experts, emotion_bias=[round(float(b), 4) for b in biases[0].detach()],
                   sentiment_bias=[round(float(b), 4) for b in biases[1].detach()])


def scores(model: LateFusionModel, config: FusionConfig, outputs: dict, labels: dict) -> dict:
    """Accuracy and weighted F1 per task of the fused model under `config`, and of each expert alone."""
    from emosent.metrics import task_metrics
    from emosent.model import EmotionSentimentOutput

    outs = {n: EmotionSentimentOutput(e, s, present=p) for n, (e, s, p) in outputs.items()}
    with torch.no_grad():
        fused = model.fuse(outs, config)
    result = {}
    for task, classes in TASKS.items():
        logits = fused.emotion_logits if task == "emotion" else fused.sentiment_logits
        m = task_metrics(len(classes), prefix="")(logits.exp(), labels[task])
        result[task] = {k: round(float(v), 4) for k, v in m.items()}
    return result


def fuse(experts: dict[str, str | Path | PretrainedModel], out: str | Path, *, data: str | Path | None = None,
         split: str = "dev", calibrate: dict[str, tuple[str | Path, str]] | None = None,
         temperatures: dict[str, float] | None = None, rule: str = "mean", card: dict | None = None,
         cache_dir: str | Path | None = None) -> LateFusionModel:
    """A late fusion of `experts` (name -> folder, "builtin:NAME" or loaded model), written to `out`.
    Temperatures: given (`temperatures`), or fitted on each expert's own labelled data
    (`calibrate`: name -> (data, split)), else 1. With `data` (labelled clips with every stream),
    the weights, temperatures and class biases are then fitted on its `split` (see the module)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty folder; name a new folder for the fused model")
    if rule not in FUSION_RULES:
        raise ValueError(f"--rule {rule!r}: choose one of {', '.join(FUSION_RULES)}")
    if not experts:
        raise ValueError("name at least one expert: --expert NAME=FOLDER")
    calibrate, temperatures = calibrate or {}, temperatures or {}
    for what, names in (("--calibrate", calibrate), ("--temperature", temperatures)):
        unknown = set(names) - set(experts)
        if unknown:
            raise ValueError(f"{what} {sorted(unknown)[0]}: not one of the experts ({', '.join(experts)})")
    cache = Path(cache_dir) if cache_dir else None
    loaded = {name: expert_by_name(value) for name, value in experts.items()}
    for name, (expert_data, expert_split) in calibrate.items():
        logits, labels = one_expert_outputs(loaded[name], expert_data, expert_split, cache)
        temperatures[name] = fit_temperature(logits, labels)
        log(f"{name} expert: temperature {temperatures[name]} fitted on {expert_data} ({expert_split}, {len(labels['emotion'])} rows)")
    specs = {name: ExpertSpec(name, 1.0, float(temperatures.get(name, 1.0))) for name in loaded}
    model = LateFusionModel(loaded, FusionConfig(specs, rule, card=card or {})).eval()
    if data is not None:
        model = adapt(model, data, split=split, cache_dir=cache)
    model.save_pretrained(out)
    return load_model(out)


def adapt(model: LateFusionModel, data: str | Path, *, split: str = "train", dev_split: str | None = None,
          cache_dir: Path | None = None) -> LateFusionModel:
    """`model` with its fusion (weights, temperatures, class biases) re-fitted on `split` of the
    labelled `data`, its experts frozen; with `dev_split`, the fused scores on it before and after
    are logged and returned in `model.config.card["adapted"]`."""
    if not isinstance(model, LateFusionModel):
        raise ValueError(f"{model.name_or_path}: a {model.model_type} model has no fusion to re-fit; "
                         "train it with emosent train --data instead")
    outputs, labels = expert_outputs(model, data, split, cache_dir)
    config = fit_fusion(model, outputs, labels)
    report = {"data": str(data), "split": split, "rows": len(labels["emotion"])}
    if dev_split:
        dev_outputs, dev_labels = expert_outputs(model, data, dev_split, cache_dir)
        report[dev_split] = {"before": scores(model, model.config, dev_outputs, dev_labels),
                             "after": scores(model, config, dev_outputs, dev_labels)}
        log(f"{dev_split}: before {json.dumps(report[dev_split]['before'])}; after {json.dumps(report[dev_split]['after'])}")
    config.card = {**config.card, "adapted": report}
    fitted = LateFusionModel(dict(model.experts.items()), config).eval()
    fitted.name_or_path = model.name_or_path
    return fitted


def train_from(base: str | Path | PretrainedModel, data: str | Path, out: str | Path, *,
               cache_dir: str | Path | None = None) -> Path:
    """`emosent train --from MODEL --data MINE --out RUN`: the late fusion `base` adapted to the
    labelled clips of MINE (fitted on train, scored on dev before and after), written to RUN/model
    with RUN/adapt.json (the report)."""
    out = Path(out)
    target = out / "model"
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"--out {out}: already holds a model; name a new run folder")
    model = load_model(base)
    dev = "dev" if has_split(data, "dev") else None
    fitted = adapt(model, data, split="train", dev_split=dev, cache_dir=Path(cache_dir) if cache_dir else None)
    fitted.save_pretrained(target)
    text = json.dumps(fitted.config.card["adapted"], indent=2) + "\n"
    write_atomically(out / "adapt.json", lambda tmp: tmp.write_text(text))
    return target


def has_split(data: str | Path, split: str) -> bool:
    try:
        return bool(read_manifest(data, split))
    except (ValueError, OSError):
        return False
