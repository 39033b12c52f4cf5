"""Every registered re-ranker, and the spec that builds one: kind, config, input sizes.

The registry sits above ``models/`` and ``rankers/``: it knows them all, they know nothing of
it. Every re-ranker reads a :class:`~prm.data.batch.ListInputs` and returns (B, L) scores, so
training, evaluation, export and serving work with any of them. A spec is stored (as plain
values) in every checkpoint and bundle, so a saved model can always be rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from prm.config import EvaluatorConfig, PRMConfig, from_dict, to_dict
from prm.models.base import Reranker
from prm.models.prm import PRM
from prm.rankers.dlcm import DLCM, DLCMConfig
from prm.rankers.evaluator_generator import GeneratorEvaluator
from prm.rankers.gsf import GSF, GSFConfig
from prm.rankers.midnn import MiDNN, MiDNNConfig
from prm.rankers.seq2slate import Seq2Slate, Seq2SlateConfig
from prm.rankers.setrank import SetRank, SetRankConfig

# kind -> (model class taking (config, d_feature, d_pv), its config dataclass)
RERANKERS: dict[str, tuple[Callable[[Any, int, int], Reranker], type]] = {
    "prm": (PRM, PRMConfig),
    "dlcm": (DLCM, DLCMConfig),
    "seq2slate": (Seq2Slate, Seq2SlateConfig),
    "setrank": (SetRank, SetRankConfig),
    "gsf": (GSF, GSFConfig),
    "midnn": (MiDNN, MiDNNConfig),
    "generator_evaluator": (GeneratorEvaluator, EvaluatorConfig),
}


@dataclass(frozen=True)
class ModelSpec:
    """How to build a re-ranker: its registered ``kind``, its config (a mapping of the kind's
    config dataclass; unknown keys are rejected) and the input sizes it reads."""

    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    d_feature: int = 0
    d_pv: int = 0

    def __post_init__(self) -> None:
        if self.kind not in RERANKERS:
            raise ValueError(f"unknown re-ranker kind {self.kind!r}; known: {sorted(RERANKERS)}")
        # Fill in the defaults and reject unknown keys now, not when training starts.
        object.__setattr__(self, "config", to_dict(self.typed_config()))

    @classmethod
    def of(cls, kind: str, config: Any, d_feature: int, d_pv: int) -> ModelSpec:
        """A spec from a config dataclass or a mapping."""
        mapping = config if isinstance(config, dict) else to_dict(config)
        return cls(kind, dict(mapping), d_feature, d_pv)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        """The spec as a checkpoint or bundle stores it (:meth:`to_dict`)."""
        return cls(values["kind"], dict(values["config"]), values["d_feature"], values["d_pv"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def typed_config(self) -> Any:
        return from_dict(RERANKERS[self.kind][1], self.config)

    @property
    def uses_pv(self) -> bool:
        return self.d_pv > 0 and self.config.get("use_pv", True)

    def build(self) -> Reranker:
        """A freshly initialised re-ranker (seed torch first for a reproducible one)."""
        model_class, _ = RERANKERS[self.kind]
        return model_class(self.typed_config(), self.d_feature, self.d_pv)
