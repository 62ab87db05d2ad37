"""Calibrated decoding with Hugging Face ``generate``: a ``LogitsProcessor`` and a one-line helper.

:class:`CalibratedLogitsProcessor` replaces the next-token logits z by the calibrator's
``transform_logits(z, context)``, so that every sampling warper that follows (temperature, top-k,
top-p, min-p, typical, epsilon/eta) sees *calibrated* probabilities::

    from transformers import LogitsProcessorList
    proc = CalibratedLogitsProcessor(tokcal.load_calibrator("cal.json"))
    model.generate(**inputs, do_sample=True, top_p=0.9, logits_processor=LogitsProcessorList([proc]))

Where it runs. ``generate`` builds its list as [built-in constraint processors (repetition penalty,
no-repeat-ngram, bad words, min length, forced/suppressed tokens, ...)] + [the user's
``logits_processor``] + [sampling warpers from the generation config (temperature, top-k, top-p, min-p,
typical, epsilon, eta)] + [watermark, ``LogitNormalization``] (``GenerationMixin._get_logits_processor``;
the same order held before warpers and processors were merged in transformers 4.45, PR #32626, when the
warpers were a second list applied after all processors). So the user processor always runs *before*
the sampling warpers, which is what calibration needs, and ``generation_config.temperature`` acts on top
of the calibrated distribution. Constraint processors run before it: the tokens they forbid arrive as
-inf, and the processor hands the calibrator finite stand-ins (the most negative float) so features such
as entropy stay finite, then puts the -inf back. A fixed temperature commutes with all of them exactly.

Decoding modes. Greedy and sampling pass raw logits; the output is the calibrated logits. Beam search
passes log-softmax scores and adds them to the beam scores, so the output is renormalised:
``out - logsumexp(out) + logsumexp(in)`` (log-probabilities again, keeping any mass removed by
constraints). ``input_kind="auto"`` (default) treats a batch as log-probabilities when the first row is
<= 0 with logsumexp <= 1e-4 (total mass at most 1, so beam search with constraints is recognised too);
mistaking raw logits for log-probabilities only shifts each row by a constant, which changes neither
greedy nor sampled tokens. :func:`generate` sets the kind explicitly from ``num_beams``.

Context. The calibrator receives ``context["position"]`` — the index of the token being predicted within
its sequence, i.e. the current length minus left padding — and any fixed ``groups`` (one value per call
or per prompt); a context-aware calibrator computes its logit features (entropy, margin, ...) from the
logits itself. Context entries are computed only when the calibrator reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..errors import ParameterError, TokcalError

InputKind = Literal["auto", "logits", "logprobs"]
_NORMALISED_TOL = 1e-4


def check_calibrator(calibrator: Any, allow_argmax_change: bool) -> None:
    """Refuse an object that is not a calibrator, or one that may change the argmax unless allowed."""
    if not callable(getattr(calibrator, "transform_logits", None)):
        raise TokcalError(f"{type(calibrator).__name__} is not a tokcal calibrator (no transform_logits)")
    if not getattr(calibrator, "preserves_argmax", False) and not allow_argmax_change:
        raise ParameterError(
            f"calibrator {type(calibrator).__name__} may change the most likely token (it does "
            "not preserve the argmax); pass {allow_argmax_change=True} to decode with it anyway"
        )


class _StepContext(Mapping):
    """The calibrator's context for one decoding step; each entry is computed on first access."""

    def __init__(self, proc: CalibratedLogitsProcessor, input_ids: torch.Tensor) -> None:
        self._proc, self._ids, self._cache = proc, input_ids, {}
        self._keys = ("position", *proc.groups)

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = self._proc._context_value(key, self._ids)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class CalibratedLogitsProcessor(LogitsProcessor):
    """A ``transformers.LogitsProcessor`` applying a tokcal calibrator to next-token scores.

    Parameters
    ----------
    calibrator:
        any tokcal calibrator (``transform_logits(logits, context)``, ``preserves_argmax``).
    allow_argmax_change:
        decode with a calibrator that may change the most likely token (``preserves_argmax`` False);
        refused with a :class:`~tokcal.errors.TokcalError` otherwise.
    groups:
        ``{name: value}`` (one value for every sequence) or ``{name: [value per prompt]}``; rows of
        ``num_beams``/``num_return_sequences`` expansions inherit the value of their prompt.
    pad_lengths:
        left-padding length of each prompt (``(attention_mask == 0).sum(1)``), subtracted from the
        current length to give the position; ``None`` = no padding.
    input_kind:
        ``"logits"`` (greedy / sampling), ``"logprobs"`` (beam search: output renormalised) or ``"auto"``.
    """

    def __init__(
        self,
        calibrator: Any,
        allow_argmax_change: bool = False,
        *,
        groups: Mapping[str, Any] | None = None,
        pad_lengths: Any = None,
        input_kind: InputKind = "auto",
    ) -> None:
        check_calibrator(calibrator, allow_argmax_change)
        if input_kind not in ("auto", "logits", "logprobs"):
            raise TokcalError(f"input_kind must be 'auto', 'logits' or 'logprobs', got {input_kind!r}")
        self.calibrator = calibrator
        self.input_kind = input_kind
        self.groups = {str(k): v for k, v in (groups or {}).items()}
        self.pad_lengths = None if pad_lengths is None else torch.as_tensor(pad_lengths, dtype=torch.long)

    # -- context ----------------------------------------------------------------------------------

    def _per_row(self, values: Any, rows: int, what: str) -> Any:
        """Broadcast per-prompt values to the ``rows`` of the (beam/return-sequence expanded) batch."""
        n = len(values)
        if rows % n:
            raise TokcalError(f"{what} has {n} values, which does not divide the {rows} decoding rows")
        rep = rows // n
        if isinstance(values, torch.Tensor):
            return values.repeat_interleave(rep)
        return np.repeat(np.asarray(values, dtype=object), rep)

    def _context_value(self, key: str, input_ids: torch.Tensor) -> Any:
        rows, cur_len = input_ids.shape
        if key == "position":
            pos = torch.full((rows,), cur_len, dtype=torch.long, device=input_ids.device)
            if self.pad_lengths is not None:
                pos = pos - self._per_row(self.pad_lengths, rows, "pad_lengths").to(input_ids.device)
            return pos
        value = self.groups[key]
        if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
            return np.full(rows, value, dtype=object)
        return self._per_row(value, rows, f"group {key!r}")

    # -- processing -------------------------------------------------------------------------------

    def _is_logprobs(self, scores: torch.Tensor) -> bool:
        if self.input_kind != "auto":
            return self.input_kind == "logprobs"
        row = scores[0]
        return bool(row.max() <= 0) and float(torch.logsumexp(row, 0)) < _NORMALISED_TOL

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = torch.isneginf(scores)
        any_masked = bool(masked.any())
        z = scores.masked_fill(masked, torch.finfo(scores.dtype).min) if any_masked else scores
        out = self.calibrator.transform_logits(z, _StepContext(self, input_ids))
        out = torch.as_tensor(out, dtype=scores.dtype, device=scores.device)
        if out.shape != scores.shape:
            raise TokcalError(f"calibrator returned logits of shape {tuple(out.shape)} for {tuple(scores.shape)}")
        if any_masked:
            out = out.masked_fill(masked, float("-inf"))
        if self._is_logprobs(scores):
            out = out - torch.logsumexp(out, -1, keepdim=True) + torch.logsumexp(scores, -1, keepdim=True)
        return out


def _num_beams(model: Any, kwargs: Mapping[str, Any]) -> int:
    if "num_beams" in kwargs:
        return int(kwargs["num_beams"])
    cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    return int(getattr(cfg, "num_beams", 1) or 1)


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[str],
    calibrator: Any,
    *,
    allow_argmax_change: bool = False,
    groups: Mapping[str, Any] | None = None,
    logits_processor: Sequence[LogitsProcessor] | None = None,
    **generate_kwargs: Any,
) -> Any:
    """Generate from ``prompt`` with calibrated next-token probabilities; ``tokcal.generate``.

    ``prompt`` is one string or a list (left-padded into one batch). The calibrator runs first among the
    user's ``logits_processor`` and before every sampling warper of ``generate_kwargs`` / the generation
    config (temperature, top_k, top_p, min_p, ...). Returns the generated continuation (a string, or a
    list for a list of prompts / several return sequences), or the ``generate`` output object itself when
    ``return_dict_in_generate=True`` (pass ``output_logits=True`` to feed it to ``tokcal.annotate``).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise TokcalError("generate: no prompt given")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if len(prompts) > 1 and pad_id is None:
        raise TokcalError("generate: several prompts need padding, but the tokenizer has no pad or eos token")
    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad_token is None and len(prompts) > 1:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=len(prompts) > 1)
    finally:
        tokenizer.padding_side = side
        if pad_token is None and len(prompts) > 1:
            tokenizer.pad_token = None
    pads = (enc["attention_mask"] == 0).sum(1)
    proc = CalibratedLogitsProcessor(
        calibrator, allow_argmax_change, groups=groups, pad_lengths=pads if bool(pads.any()) else None,
        input_kind="logprobs" if _num_beams(model, generate_kwargs) > 1 else "logits",
    )
    generate_kwargs.setdefault("pad_token_id", pad_id)
    device = getattr(model, "device", None)
    inputs = {k: v.to(device) for k, v in enc.items()} if device is not None else dict(enc)
    with torch.no_grad():
        out = model.generate(
            **inputs, logits_processor=LogitsProcessorList([proc, *(logits_processor or [])]),
            **generate_kwargs,
        )
    if generate_kwargs.get("return_dict_in_generate"):
        return out
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts[0] if isinstance(prompt, str) and len(texts) == 1 else texts
