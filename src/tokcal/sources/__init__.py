"""Where TokenTables come from: Hugging Face models, API log-probs, text readers, alignment.

This package never imports torch: ``tokcal.sources.hf`` (torch + transformers) is loaded only when
it is used (``from tokcal.sources import hf`` or attribute access ``tokcal.sources.hf``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .align import TokenAlignment, align_labels
from .dataset import DatasetWriter, read_manifest
from .logprobs import read_logprobs
from .readers import Document, Pair, TaggedSentence, read_conll, read_jsonl, read_pairs_jsonl, read_text

__all__ = [
    "Document", "Pair", "TaggedSentence", "read_text", "read_jsonl", "read_pairs_jsonl", "read_conll",
    "DatasetWriter", "read_manifest", "read_logprobs", "align_labels", "TokenAlignment", "hf",
]


def __getattr__(name: str) -> Any:
    if name == "hf":
        return importlib.import_module(f"{__name__}.hf")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
