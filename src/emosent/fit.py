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
  with it. `fuse` changes nothing else.
* `adapt` (a user's domain) first re-fits each expert's output heads (the emotion and sentiment
  classifiers after its fusion block) on the rows where it answered, by its own cross-entropy
  with an L2 pull towards the shipped heads (L2-SP), then the fusion as above. The encoders and
  everything else in an expert stay frozen; the frozen features are extracted once and cached.

Letters: N rows, E experts.
"""

from __future__ import annotations

import copy
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
from emosent.metrics import TASKS, task_metrics
from emosent.model import EmotionSentimentOutput, model_inputs
from emosent.pretrained import PretrainedModel

FIT_STEPS = 300
FIT_LR = 0.05
PULL = 1.0  # strength of the L2 pull towards the starting point, per row of data: PULL / N
HEADS = ("emotion_head", "sentiment_head")  # what `adapt` re-fits in an expert that has them
HEAD_EPOCHS = 30
HEAD_LR = 1e-3
HEAD_BATCH = 64


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


def labelled_features(model: PretrainedModel, data: str | Path, split: str, cache_dir: Path | None, what: str):
    """The frozen features of `model` on `split` of `data` (cached), refusing an empty split."""
    features = extract_features(model, read_manifest(data, split), split, cache_dir)
    if not len(features):
        raise ValueError(f"{data}: no usable {split} clip to {what}: {features.skipped.summary()}")
    return features


@torch.no_grad()
def outputs_on(model: PretrainedModel, features) -> tuple[dict, dict]:
    """The model's uncalibrated outputs on cached `features`: ({expert: (emotion (N, 7), sentiment
    (N, 3), present (N,))}, {task: labels (N,)}); a model that is not a late fusion is one expert
    named "model"."""
    chunks: dict = {}
    for batch in DataLoader(FeatureDataset(features), batch_size=256, collate_fn=collate_features):
        for name, out in experts_of(model, model_inputs(batch)).items():
            chunks.setdefault(name, []).append((out.emotion_logits, out.sentiment_logits, out.present))
    outputs = {name: tuple(torch.cat(part) for part in zip(*parts)) for name, parts in chunks.items()}
    return outputs, {task: features.tensors[task] for task in TASKS}


def experts_of(model: PretrainedModel, inputs: dict) -> dict[str, EmotionSentimentOutput]:
    if isinstance(model, LateFusionModel):
        return model.expert_outputs(**inputs)
    out = model(**inputs)
    if out.present is None:
        out.present = torch.ones(len(out.emotion_logits), dtype=torch.bool)
    return {"model": out}


def expert_outputs(model: LateFusionModel, data: str | Path, split: str, cache_dir: Path | None) -> tuple[dict, dict]:
    """Each expert's uncalibrated logits and presence on `split` of `data` (see `outputs_on`)."""
    return outputs_on(model, labelled_features(model, data, split, cache_dir, "fit on"))


def one_expert_outputs(expert: PretrainedModel, data: str | Path, split: str, cache_dir: Path | None) -> tuple[tuple, dict]:
    """An expert's logits on its own labelled data, as (emotion, sentiment, present) and labels."""
    outputs, labels = outputs_on(expert, labelled_features(expert, data, split, cache_dir, "calibrate on"))
    return outputs["model"], labels


def fit_heads(model: LateFusionModel, features, *, epochs: int = HEAD_EPOCHS) -> list[str]:
    """Re-fit, in place, each expert's output heads (HEADS) on cached `features` of labelled rows:
    cross-entropy of both tasks on the rows where the expert answered, plus an L2 pull towards the
    heads it started from (strength PULL / N). Everything else stays frozen. Returns the experts
    whose heads were re-fitted (a face expert has none: its network ships fixed)."""
    heads = {name: [getattr(expert, h) for h in HEADS] for name, expert in model.experts.items()
             if all(isinstance(getattr(expert, h, None), torch.nn.Module) for h in HEADS)}
    params = [p for modules in heads.values() for m in modules for p in m.parameters()]
    if not params:
        return []
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    start = [p.detach().clone() for p in params]
    rows = len(features)
    optimiser = torch.optim.Adam(params, lr=HEAD_LR)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        loader = DataLoader(FeatureDataset(features), batch_size=HEAD_BATCH, shuffle=True, generator=generator,
                            collate_fn=collate_features)
        for batch in loader:
            inputs = model_inputs(batch)
            outs = model.expert_outputs(**inputs)
            loss = PULL / rows * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
            for name in heads:
                out = outs[name]
                if out.present.any():
                    loss = loss + (F.cross_entropy(out.emotion_logits[out.present], batch["emotion"][out.present])
                                   + F.cross_entropy(out.sentiment_logits[out.present], batch["sentiment"][out.present]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.requires_grad_(False)
    return list(heads)


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


def fit_fusion(model: LateFusionModel, outputs: dict, labels: dict, *, steps: int = FIT_STEPS,
               biases: bool = True) -> FusionConfig:
    """The experts' weights and temperatures and the per-class biases that minimise the fused
    prediction's negative log-likelihood on `outputs` (see the module docstring). Without
    `biases`, the biases stay at 0: for data whose class mix is no real domain's (label-paired
    rows of different datasets), the priors are left to `adapt` on a user's own clips."""
    names = list(outputs)
    start = {n: (model.config.experts[n].temperature, model.config.experts[n].weight) for n in names}
    log_t = torch.tensor([float(torch.tensor(start[n][0]).log()) for n in names], requires_grad=True)
    log_w = torch.tensor([float(torch.tensor(max(start[n][1], 1e-3)).log()) for n in names], requires_grad=True)
    bias = (torch.zeros(len(EMOTIONS), requires_grad=biases), torch.zeros(len(SENTIMENTS), requires_grad=biases))
    t0, w0 = log_t.detach().clone(), log_w.detach().clone()
    outs = {n: EmotionSentimentOutput(e, s, present=p) for n, (e, s, p) in outputs.items()}
    rows = len(labels["emotion"])
    optimiser = torch.optim.Adam([log_t, log_w, *(bias if biases else ())], lr=FIT_LR)
    for _ in range(steps):
        optimiser.zero_grad()
        fused = model.fuse(outs, temperatures={n: log_t[i].exp() for i, n in enumerate(names)},
                           weights={n: log_w[i].exp() for i, n in enumerate(names)}, biases=bias)
        nll = F.nll_loss(fused.emotion_logits, labels["emotion"]) + F.nll_loss(fused.sentiment_logits, labels["sentiment"])
        pull = ((log_t - t0) ** 2).sum() + ((log_w - w0) ** 2).sum() + sum((b ** 2).sum() for b in bias)
        (nll + PULL / rows * pull).backward()
        optimiser.step()
    experts = {n: replace(model.config.experts[n], temperature=round(float(log_t[i].detach().exp()), 4),
                          weight=round(float(log_w[i].detach().exp()), 4)) for i, n in enumerate(names)}
    return replace(model.config, experts=experts, emotion_bias=[round(float(b), 4) for b in bias[0].detach()],
                   sentiment_bias=[round(float(b), 4) for b in bias[1].detach()])


def scores(model: LateFusionModel, config: FusionConfig, outputs: dict, labels: dict) -> dict:
    """Accuracy and weighted F1 per task of the fused model under `config`."""
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
          cache_dir: Path | None = None, heads: bool = True) -> LateFusionModel:
    """A copy of `model` adapted to the labelled `data`: with `heads`, its experts' output heads
    re-fitted on `split` (see `fit_heads`), then its fusion (weights, temperatures, class biases);
    the encoders stay frozen and `model` is not changed. With `dev_split`, the fused scores on it
    before and after are logged and returned in the result's `config.card["adapted"]`."""
    if not isinstance(model, LateFusionModel):
        raise ValueError(f"{model.name_or_path}: a {model.model_type} model has no fusion to re-fit; "
                         "train it with emosent train --data instead")
    features = labelled_features(model, data, split, cache_dir, "fit on")
    dev = labelled_features(model, data, dev_split, cache_dir, "score on") if dev_split else None
    report = {"data": str(data), "split": split, "rows": len(features)}
    before = scores(model, model.config, *outputs_on(model, dev)) if dev is not None else None
    fitted = LateFusionModel({name: with_own_heads(expert) for name, expert in model.experts.items()}, model.config)
    fitted.name_or_path = model.name_or_path
    report["heads_refitted"] = fit_heads(fitted, features) if heads else []
    fitted.config = fit_fusion(fitted, *outputs_on(fitted, features))
    if dev is not None:
        report[dev_split] = {"before": before, "after": scores(fitted, fitted.config, *outputs_on(fitted, dev))}
        log(f"{dev_split}: before {json.dumps(report[dev_split]['before'])}; after {json.dumps(report[dev_split]['after'])}")
    fitted.config = replace(fitted.config, card={**fitted.config.card, "adapted": report})
    return fitted.eval()


def with_own_heads(expert: PretrainedModel) -> PretrainedModel:
    """A twin of `expert` that shares its encoders (some cannot be copied: a CTranslate2 model)
    but holds copies of its output heads, so that re-fitting them leaves `expert` as it was."""
    twin = copy.copy(expert)
    twin._modules = dict(expert._modules)
    for name in HEADS:
        if name in twin._modules:
            twin._modules[name] = copy.deepcopy(expert._modules[name])
    return twin


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
