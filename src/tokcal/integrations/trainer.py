"""Token calibration inside the Hugging Face ``Trainer``: metrics, a callback, calibration-aware losses.

One :class:`TokenCalibration` holds the state (the last evaluation's TokenTable and Evaluation, the
AdaFocal gammas, the regression baseline) and hands the Trainer its bound methods::

    from transformers import Trainer, TrainingArguments
    from tokcal.integrations.trainer import TokenCalibration

    tc = TokenCalibration(loss="focal", loss_kwargs={"gamma": 2.0}, out_dir="calib", max_regression=0.02)
    trainer = Trainer(model=model, args=TrainingArguments(..., eval_strategy="steps"),
                      train_dataset=train, eval_dataset=valid,
                      preprocess_logits_for_metrics=tc.preprocess_logits_for_metrics,
                      compute_metrics=tc.compute_metrics, compute_loss_func=tc.compute_loss_func,
                      callbacks=[tc.callback])

* ``preprocess_logits_for_metrics(logits, labels)`` sketches each evaluation batch on the model's
  device with :func:`tokcal.sketch.sketch_logits` (top-k ids and logits, exact log-normaliser, gold
  logit, tail summary: O(k) numbers per token instead of V), so the Trainer never gathers or keeps
  [N, V] logits. It returns two tensors ``[B, T, k + 1]`` (ids, label) and ``[B, T, F]`` (floats),
  which the Trainer pads, gathers across processes and concatenates as usual (under ``torchrun`` the
  Trainer drops the duplicates that even out the last step; the metrics equal one process's).
* ``compute_metrics(eval_pred)`` turns the gathered sketches into a TokenTable (one sequence per
  evaluation example, ``position`` = index in it) and returns :func:`tokcal.evaluate`'s token ECE,
  smooth ECE, NLL, Brier, accuracy, confidence and the chosen slices, the very numbers
  ``tokcal evaluate`` gives on the saved table. With ``batch_eval_metrics=True`` it is called per
  batch with ``compute_result``: the per-batch sketches (O(k) per token) are kept and evaluated at
  the last batch, so the result equals the non-batched one.
* ``callback`` (a ``TrainerCallback``): after each evaluation, writes ``step-N/tokens.parquet`` and
  ``step-N/evaluation.json`` under ``out_dir`` (main process only), updates AdaFocal's gammas from
  the evaluation's reliability bins, and stops training (``control.should_training_stop``) when a
  calibration limit fails: ``max_ece`` on ``metric``, or ``max_regression`` over ``baseline`` (an
  evaluation JSON / dict; default: the first evaluation of this run). The conditions are
  :func:`tokcal.gate.check_evaluation`'s (what ``tokcal check`` runs); the failing outcomes are kept
  in ``stop_reasons`` as ``(step, Outcome)``.
* ``compute_loss_func(outputs, labels, num_items_in_batch)``: the chosen :mod:`tokcal.losses` loss,
  summed over the micro-batch and divided by ``num_items_in_batch`` (the Trainer's token count over
  all micro-batches of one optimiser step), so gradient accumulation gives the gradient of the
  full batch. MMCE and soft-binned ECE are batch statistics: each micro-batch contributes its own
  term weighted by its token count, an approximation of the term over the whole accumulated batch.

Causal LMs (``causal=True``, the default) predict ``labels[t + 1]`` at position t; the labels are
shifted (never the logits, which would copy them). Seq2seq and token classification: ``causal=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from .. import losses as L
from ..errors import ValidationError
from ..evaluation import Evaluation, evaluate
from ..sketch import DEFAULT_TOP_K, LogitSketch, TailLayout, sketch_logits
from ..table import TokenTable

#: loss name -> (function, is a batch statistic added to CE)
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": L.cross_entropy, "focal": L.focal, "flsd53": L.flsd53, "dual_focal": L.dual_focal,
    "label_smoothing": L.label_smoothing, "confidence_penalty": L.confidence_penalty,
    "frequency_weighted_ce": L.frequency_weighted_ce,
}
TERMS = ("mmce", "soft_binned_ece")
METRIC_KEYS = ("ece", "smooth_ece", "nll", "brier", "accuracy", "confidence", "ece_debiased", "signed_gap")


def _shift(labels: torch.Tensor) -> torch.Tensor:
    """labels[..., t + 1] at position t, -100 at the last position (as transformers' causal LM loss)."""
    return F.pad(labels[..., 1:], (0, 1), value=-100)


def _logits_of(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    return outputs[0]


class LossAdapter:
    """A ``compute_loss_func`` for the Trainer: ``sum of the loss over the micro-batch / num_items_in_batch``.

    ``loss``: a name of :data:`LOSSES`, ``"mmce"`` / ``"soft_binned_ece"`` (``CE + lam * term``, with
    ``lam`` in ``loss_kwargs``), an :class:`tokcal.losses.AdaFocal`, or any callable
    ``(logits, labels, *, reduction="sum")``. Without ``num_items_in_batch`` (no label counting by the
    Trainer) the micro-batch's own token count divides.
    """

    def __init__(self, loss: Any = "cross_entropy", loss_kwargs: Mapping[str, Any] | None = None, *,
                 causal: bool = True):
        kw = dict(loss_kwargs or {})
        if isinstance(loss, str):
            if loss in TERMS:
                lam = float(kw.pop("lam", 1.0))
                self.fn = lambda z, y, reduction: L.cross_entropy_plus(z, y, loss, lam, reduction=reduction, **kw)
            elif loss in LOSSES:
                fn = LOSSES[loss]
                self.fn = lambda z, y, reduction: fn(z, y, reduction=reduction, **kw)
            else:
                raise ValidationError(f"loss must be one of {', '.join([*LOSSES, *TERMS])}, an AdaFocal or a "
                                      f"callable, got {loss!r}")
        elif callable(loss):
            self.fn = lambda z, y, reduction: loss(z, y, reduction=reduction, **kw)
        else:
            raise ValidationError(f"loss must be a name, an AdaFocal or a callable, got {type(loss).__name__}")
        self.loss, self.causal = loss, bool(causal)

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        if labels is None:
            raise ValidationError("compute_loss_func: the batch has no labels")
        logits = _logits_of(outputs)
        y = _shift(labels) if self.causal else labels
        total = self.fn(logits, y.to(logits.device), reduction="sum")
        denom = (y != -100).sum() if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(denom):
            denom = denom.to(total.device)
        return total / denom


def pack_sketch(sk: LogitSketch, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ints [n, k + 1] = top ids + label, floats [n, 2k + 2 + 2B] = top logits, label logit, log Z, tail)."""
    ints = np.concatenate([sk.top_ids, labels[:, None]], axis=1).astype(np.int64)
    floats = np.concatenate([sk.top_logits, sk.label_logit[:, None], sk.log_normalizer[:, None],
                             sk.tail.reshape(len(sk), -1)], axis=1).astype(np.float32)
    return ints, floats


def unpack_sketch(ints: np.ndarray, floats: np.ndarray, k: int, vocab_size: int,
                  layout: TailLayout) -> tuple[LogitSketch, np.ndarray]:
    b = layout.n_nodes
    sk = LogitSketch(top_ids=ints[:, :k].astype(np.int32), top_logits=floats[:, :k].astype(np.float32),
                     label_logit=floats[:, k].astype(np.float32), log_normalizer=floats[:, k + 1].astype(np.float32),
                     tail=floats[:, k + 2:k + 2 + 2 * b].reshape(-1, b, 2).astype(np.float32), layout=layout,
                     vocab_size=vocab_size)
    return sk, ints[:, k].astype(np.int32)


class TokenCalibration:
    """State and bound methods for token calibration in a ``transformers.Trainer`` (module docstring).

    Parameters: ``top_k`` of the sketch; ``causal`` (shift labels); ``bins``, ``binning``, ``slices``,
    ``bootstrap``, ``seed`` of :func:`tokcal.evaluate` (``bootstrap=0`` by default: intervals cost time
    at every evaluation); ``tokenizer`` (or ``vocab``: a :class:`tokcal.vocab.Vocabulary` or id -> string)
    for token strings in the saved tables and the worst-token list;
    ``loss`` / ``loss_kwargs`` for :attr:`compute_loss_func` (``loss="adafocal"`` makes an
    ``AdaFocal(bins)`` that the callback updates, or pass your own instance); ``out_dir`` for the saved
    tables and evaluations; ``max_ece``, ``max_regression``, ``baseline`` and ``metric`` (ece,
    ece_debiased or smooth_ece) for the stop on a calibration regression.
    """

    def __init__(self, *, top_k: int = DEFAULT_TOP_K, causal: bool = True, bins: int = 15, binning: str = "width",
                 slices: Sequence[Any] = (), bootstrap: int = 0, seed: int = 0, vocab: Any = None,
                 tokenizer: Any = None,
                 loss: Any = "cross_entropy", loss_kwargs: Mapping[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None, max_ece: float | None = None,
                 max_regression: float | None = None, baseline: Any = None, metric: str = "ece"):
        if metric not in ("ece", "ece_debiased", "smooth_ece"):
            raise ValidationError(f"metric must be ece, ece_debiased or smooth_ece, got {metric!r}")
        for name, value in (("max_ece", max_ece), ("max_regression", max_regression)):
            if value is not None and not (0 <= float(value) < float("inf")):
                raise ValidationError(f"{name} must be a finite number >= 0, got {value}")
        if loss == "adafocal":
            loss = L.AdaFocal(bins=bins)
        self.top_k, self.causal = int(top_k), bool(causal)
        self.bins, self.binning, self.slices = int(bins), binning, list(slices)
        if vocab is None and tokenizer is not None:
            from ..vocab import Vocabulary

            vocab = Vocabulary.from_tokenizer(tokenizer)
        self.bootstrap, self.seed, self.vocab = int(bootstrap), int(seed), vocab
        self.loss = loss
        self.adafocal = loss if isinstance(loss, L.AdaFocal) else None
        self.compute_loss_func = LossAdapter(loss, loss_kwargs, causal=causal)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.max_ece, self.max_regression, self.metric = max_ece, max_regression, metric
        self.baseline = _load_baseline(baseline)
        self.last_table: TokenTable | None = None
        self.last_evaluation: Evaluation | None = None
        self.history: list[dict[str, Any]] = []
        self.stop_reasons: list[tuple[int, Any]] = []  # (global step, failing tokcal.gate.Outcome)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._vocab_size: int | None = None
        self._layout: TailLayout | None = None
        self.callback = _Callback(self)

    # ---- evaluation -------------------------------------------------------------------------------

    def preprocess_logits_for_metrics(self, logits: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sketch one evaluation batch on its device: ([B, T, k + 1] int64, [B, T, F] float32)."""
        z = _logits_of(logits)
        if labels is None:
            raise ValidationError("preprocess_logits_for_metrics: evaluation needs labels")
        y = (_shift(labels) if self.causal else labels).to(z.device)
        b, t, v = z.shape[0], z.shape[1], z.shape[-1]
        flat_y = y.reshape(-1)
        keep = torch.nonzero(flat_y != -100)[:, 0]
        zk = z.reshape(-1, v).index_select(0, keep)
        if not 1 <= self.top_k <= v:
            raise ValidationError(f"top_k={self.top_k} must be in [1, vocab size {v}]")
        layout = TailLayout(kind="binned" if self.top_k < v else "empty")
        self._vocab_size, self._layout = v, layout
        ints = torch.full((b * t, self.top_k + 1), -100, dtype=torch.int64, device=z.device)
        floats = torch.zeros((b * t, self.top_k + 2 + 2 * layout.n_nodes), dtype=torch.float32, device=z.device)
        if len(keep):
            sk = sketch_logits(zk, flat_y.index_select(0, keep).cpu().numpy(), top_k=self.top_k)
            pi, pf = pack_sketch(sk, flat_y.index_select(0, keep).cpu().numpy())
            ints[keep] = torch.from_numpy(pi).to(z.device)
            floats[keep] = torch.from_numpy(pf).to(z.device)
        return ints.reshape(b, t, -1), floats.reshape(b, t, -1)

    def _table(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> TokenTable:
        ints = [p[0] for p in parts]
        floats = [p[1] for p in parts]
        k = self.top_k
        seq, pos, rows_i, rows_f = [], [], [], []
        offset = 0
        for pi, pf in zip(ints, floats, strict=True):
            lab = pi[..., k]
            bi, ti = np.nonzero(lab >= 0)
            seq.append(bi + offset)
            pos.append(ti)
            rows_i.append(pi[bi, ti])
            rows_f.append(pf[bi, ti])
            offset += pi.shape[0]
        if not sum(len(s) for s in seq):
            raise ValidationError("compute_metrics: no labelled token in the evaluation set")
        vocab_size = self._vocab_size
        if vocab_size is None:
            raise ValidationError("compute_metrics: predictions were not made by this object's "
                                  "preprocess_logits_for_metrics")
        sk, labels = unpack_sketch(np.concatenate(rows_i), np.concatenate(rows_f), k, vocab_size, self._layout)
        return TokenTable.from_sketch(sk, labels, sequence_ids=np.concatenate(seq).astype(np.int64),
                                      positions=np.concatenate(pos).astype(np.int32), vocab=self.vocab,
                                      source={"kind": "transformers.Trainer evaluation", "top_k": k})

    def compute_metrics(self, eval_pred: Any, compute_result: bool | None = None) -> dict[str, float]:
        """Token calibration metrics of the evaluation set (``eval_`` prefixed by the Trainer)."""
        preds = eval_pred.predictions
        if not isinstance(preds, (tuple, list)) or len(preds) != 2:
            raise ValidationError("compute_metrics: expected the (ints, floats) of preprocess_logits_for_metrics; "
                                  "pass preprocess_logits_for_metrics=tc.preprocess_logits_for_metrics")
        ints, floats = (p.detach().cpu().numpy() if torch.is_tensor(p) else np.asarray(p) for p in preds)
        self._parts.append((ints, floats))
        if compute_result is False:
            return {}
        parts, self._parts = self._parts, []
        table = self._table(parts)
        ev = evaluate(table, slices=self.slices, bins=self.bins, binning=self.binning, bootstrap=self.bootstrap,
                      seed=self.seed)
        self.last_table, self.last_evaluation = table, ev
        return metrics_of(ev)


def metrics_of(ev: Evaluation) -> dict[str, float]:
    """Flat metric dict of an Evaluation: ``token_<metric>`` overall, ``token_ece[<slice>=<value>]``."""
    d = ev.to_dict()
    out = {f"token_{k}": float(d["overall"][k]) for k in METRIC_KEYS if d["overall"].get(k) is not None}
    out["token_n"] = float(d["overall"]["n"])
    for name, rows in (d.get("slices") or {}).items():
        for r in rows:
            if r.get("ece") is not None:
                out[f"token_ece[{name}={r['value']}]"] = float(r["ece"])
    return out


def _load_baseline(baseline: Any) -> dict[str, Any] | None:
    if baseline is None:
        return None
    if isinstance(baseline, Evaluation):
        return baseline.to_dict()
    if isinstance(baseline, Mapping):
        return dict(baseline)
    return Evaluation.from_json(baseline).to_dict()


class _Callback(TrainerCallback):
    """Saves each evaluation, updates AdaFocal, stops on a calibration regression (see the module doc)."""

    def __init__(self, tc: TokenCalibration):
        self.tc = tc

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        tc = self.tc
        ev = tc.last_evaluation
        if ev is None:
            return control
        d = ev.to_dict()
        step = int(state.global_step)
        tc.history.append({"step": step, **metrics_of(ev)})
        if tc.out_dir is not None and state.is_world_process_zero:
            where = tc.out_dir / f"step-{step}"
            where.mkdir(parents=True, exist_ok=True)
            tc.last_table.write_parquet(where / "tokens.parquet")
            ev.to_json(where / "evaluation.json")
        if tc.adafocal is not None:
            from ..metrics import reliability_bins

            p = _probs(tc.last_table)
            tc.adafocal.update(reliability_bins(p[0], p[1], bins=tc.adafocal.bins, binning="mass"))
        reasons = _failed_conditions(tc, d)
        if tc.baseline is None and tc.max_regression is not None:
            tc.baseline = d  # the first evaluation of the run is the baseline
        if reasons:
            tc.stop_reasons += [(step, o) for o in reasons]
            control.should_training_stop = True
        return control


def _probs(table: TokenTable) -> tuple[np.ndarray, np.ndarray]:
    from ..probs import token_probs

    p = token_probs(table)
    keep = table.labeled
    return p.confidence[keep], p.correct[keep]


def _failed_conditions(tc: TokenCalibration, d: dict[str, Any]) -> list[Any]:
    """The failing :mod:`tokcal.gate` outcomes (overall limit, regression over the baseline) of ``d``."""
    from .. import gate

    kw: dict[str, Any] = {}
    if tc.max_ece is not None:
        kw["max_ece"] = float(tc.max_ece)
    if tc.max_regression is not None and tc.baseline is not None:
        kw.update(baseline=tc.baseline, max_regression=float(tc.max_regression))
    if not kw:
        return []
    return gate.check_evaluation(d, metric=tc.metric, **kw).failures
