"""Build any re-ranker from the spec stored in its checkpoint: kind, config, input sizes.

Every re-ranker (PRM and the baselines) reads a :class:`~prm.data.batch.ListInputs` and returns
(B, L) scores, so the trainer, evaluation, export and serving work with any of them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prm.config import EvaluatorConfig, PRMConfig, from_dict, to_dict
from prm.models.prm import PRM
from prm.rankers.common import reranker_factory
from prm.rankers.dlcm import DLCM, DLCMConfig
from prm.rankers.evaluator_generator import GeneratorEvaluator
from prm.rankers.gsf import GSF, GSFConfig
from prm.rankers.midnn import MiDNN, MiDNNConfig
from prm.rankers.seq2slate import Seq2Slate, Seq2SlateConfig
from prm.rankers.setrank import SetRank, SetRankConfig


def _build_prm(config: dict[str, Any], d_feature: int, d_pv: int) -> nn.Module:
    return PRM(from_dict(PRMConfig, config), d_feature, d_pv)


# kind -> factory(config mapping, d_feature, d_pv)
RERANKERS = {
    "prm": _build_prm,
    "dlcm": reranker_factory(DLCM, DLCMConfig),
    "seq2slate": reranker_factory(Seq2Slate, Seq2SlateConfig),
    "setrank": reranker_factory(SetRank, SetRankConfig),
    "gsf": reranker_factory(GSF, GSFConfig),
    "midnn": reranker_factory(MiDNN, MiDNNConfig),
    "generator_evaluator": reranker_factory(GeneratorEvaluator, EvaluatorConfig),
}


def prm_spec(config: PRMConfig, d_feature: int, d_pv: int) -> dict[str, Any]:
    return {"kind": "prm", "config": to_dict(config), "d_feature": d_feature, "d_pv": d_pv}


def build_reranker(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised re-ranker of the kind and sizes in ``spec``."""
    if spec["kind"] not in RERANKERS:
        raise ValueError(f"unknown re-ranker kind {spec['kind']!r}; known: {sorted(RERANKERS)}")
    return RERANKERS[spec["kind"]](spec["config"], spec["d_feature"], spec["d_pv"])
