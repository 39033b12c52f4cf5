"""Score candidate lists from a model bundle with ONNX Runtime (default) or PyTorch eager.

Both backends take the same NumPy inputs and run the same graphs (:mod:`prm.serving.graphs`):
first PV from the raw user inputs, then the re-ranker's scores. The HTTP service, batch
re-ranking and explanations all go through :class:`Predictor`, so they score alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from prm.data.batch import ListInputs
from prm.data.tables import Catalog
from prm.pretrain.ctr import load_ctr
from prm.registry import ModelSpec
from prm.serving.bundle import (
    CATALOG,
    CTR_TORCH,
    PV_ONNX,
    RERANKER_ONNX,
    RERANKER_TORCH,
    BundleError,
    read_manifest,
)
from prm.serving.graphs import PVGraph, ScoreGraph

BackendName = Literal["onnx", "torch"]


@dataclass(frozen=True)
class CandidateLists:
    """Raw inputs of ``B`` candidate lists padded to ``L`` slots, in their initial order."""

    profile: np.ndarray  # (B, d_profile) float32
    history: np.ndarray  # (B, H) int64 item ids, H >= 1; any valid id at padding
    history_mask: np.ndarray  # (B, H) bool: True at real past clicks
    item_ids: np.ndarray  # (B, L) int64, 0 at padding
    features: np.ndarray  # (B, L, d_feature) float32, 0 at padding
    mask: np.ndarray  # (B, L) bool: True at real candidates

    @classmethod
    def concatenate(cls, parts: list[CandidateLists]) -> CandidateLists:
        """One batch of the lists of ``parts``, which must share L and H."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    @property
    def positions(self) -> np.ndarray:
        """(B, L) int64 initial rank of each slot, 0 at padding (as the list loaders give)."""
        return np.where(self.mask, np.arange(self.mask.shape[1]), 0)


class Backend(Protocol):
    def pv(self, inputs: CandidateLists) -> np.ndarray:
        """(B, L, d_pv) float32 personalized vectors."""
        ...

    def scores(self, inputs: CandidateLists, pv: np.ndarray) -> np.ndarray:
        """(B, L) float32 scores; padded slots may hold anything."""
        ...


class OnnxBackend:
    """ONNX Runtime sessions of the bundle's two graphs, on the CPU."""

    def __init__(self, bundle: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no shape-inference chatter per load
        providers = ["CPUExecutionProvider"]
        self._pv = ort.InferenceSession(str(bundle / PV_ONNX), options, providers=providers)
        self._scores = ort.InferenceSession(
            str(bundle / RERANKER_ONNX), options, providers=providers
        )
        # The exporter drops inputs a model ignores (PV of PRM-BASE); feed only those it kept.
        self._score_inputs = {node.name for node in self._scores.get_inputs()}

    def pv(self, inputs: CandidateLists) -> np.ndarray:
        feeds = {
            "profile": inputs.profile,
            "history": inputs.history,
            "history_mask": inputs.history_mask,
            "item_ids": inputs.item_ids,
            "item_features": inputs.features,
        }
        return self._pv.run(None, feeds)[0]

    def scores(self, inputs: CandidateLists, pv: np.ndarray) -> np.ndarray:
        feeds = {
            "features": inputs.features,
            "pv": pv,
            "positions": inputs.positions,
            "mask": inputs.mask,
        }
        feeds = {name: value for name, value in feeds.items() if name in self._score_inputs}
        return self._scores.run(None, feeds)[0]


class TorchBackend:
    """The same graphs in PyTorch eager mode; also gives attention weights for explanations."""

    def __init__(self, bundle: Path) -> None:
        payload = torch.load(bundle / RERANKER_TORCH, weights_only=True)
        reranker = ModelSpec.from_dict(payload["model_spec"]).build()
        reranker.load_state_dict(payload["state_dict"])
        self.reranker = reranker.eval()
        self._scores = ScoreGraph(self.reranker).eval()
        self._pv = PVGraph(load_ctr(bundle / CTR_TORCH)).eval()

    @torch.inference_mode()
    def pv(self, inputs: CandidateLists) -> np.ndarray:
        return self._pv(
            torch.from_numpy(inputs.profile),
            torch.from_numpy(inputs.history),
            torch.from_numpy(inputs.history_mask),
            torch.from_numpy(inputs.item_ids),
            torch.from_numpy(inputs.features),
        ).numpy()

    @torch.inference_mode()
    def scores(self, inputs: CandidateLists, pv: np.ndarray) -> np.ndarray:
        return self._scores(*self._tensors(inputs, pv)).numpy()

    @torch.inference_mode()
    def attention(self, inputs: CandidateLists, pv: np.ndarray) -> list[np.ndarray]:
        """Each block's (B, n_heads, L, L) self-attention weights (PRM only)."""
        if not hasattr(self.reranker, "forward_with_attention"):
            raise BundleError(f"{type(self.reranker).__name__} has no self-attention to show")
        _, weights = self.reranker.forward_with_attention(ListInputs(*self._tensors(inputs, pv)))
        return [block.numpy() for block in weights]

    @staticmethod
    def _tensors(inputs: CandidateLists, pv: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (
            torch.from_numpy(inputs.features),
            torch.from_numpy(pv),
            torch.from_numpy(inputs.positions),
            torch.from_numpy(inputs.mask),
        )


class Predictor:
    """A loaded bundle: its catalog, its limits and a backend that scores lists."""

    def __init__(
        self, manifest: dict[str, Any], catalog: Catalog, backend: Backend, backend_name: str
    ) -> None:
        self.manifest = manifest
        self.catalog = catalog
        self.backend = backend
        self.backend_name = backend_name

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def max_list_length(self) -> int:
        """The longest list served: the size of PRM's position table."""
        return self.manifest["reranker"]["max_list_length"]

    def pv(self, inputs: CandidateLists) -> np.ndarray:
        """(B, L, d_pv) float32 personalized vectors; zeros for a re-ranker that ignores them."""
        reranker = self.manifest["reranker"]
        if reranker["uses_pv"]:
            return self.backend.pv(inputs)
        return np.zeros((*inputs.mask.shape, reranker["d_pv"]), np.float32)

    def score(self, inputs: CandidateLists) -> np.ndarray:
        """(B, L) float32 scores of every candidate, -inf at padded slots."""
        scores = self.backend.scores(inputs, self.pv(inputs))
        return np.where(inputs.mask, scores, -np.inf).astype(np.float32)

    def known_user_lists(
        self, user_ids: np.ndarray, item_ids: np.ndarray, mask: np.ndarray
    ) -> CandidateLists:
        """Inputs of lists of catalog users and items, (B,), (B, L), (B, L); ids must be valid."""
        item_ids = np.where(mask, item_ids, 0).astype(np.int64)
        return CandidateLists(
            profile=self.catalog.profile[user_ids],
            history=self.catalog.history[user_ids],
            history_mask=self.catalog.history_mask[user_ids],
            item_ids=item_ids,
            features=self.catalog.item_features[item_ids] * mask[..., None],
            mask=mask,
        )


def load_predictor(
    bundle: str | Path, backend: BackendName = "onnx", *, threads: int = 1
) -> Predictor:
    """A predictor for the bundle written by ``prm export``.

    ``threads`` is ONNX Runtime's intra-op pool per session; the PyTorch backend uses the
    process-wide ``torch.set_num_threads`` instead.
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    catalog = Catalog.load(bundle / CATALOG)
    if backend == "onnx":
        return Predictor(manifest, catalog, OnnxBackend(bundle, threads), backend)
    if backend == "torch":
        return Predictor(manifest, catalog, TorchBackend(bundle), backend)
    raise ValueError(f"unknown backend {backend!r}; use 'onnx' or 'torch'")
