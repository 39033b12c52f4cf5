"""prm: personalized re-ranking for recommendation (Pei et al., RecSys 2019).

Everything a notebook needs is importable from here (loaded on first use, so ``prm --help``
stays fast)::

    from prm import ListDataset, PRMReranker
    model = PRMReranker(epochs=5).fit(train, valid)
    scores = model.predict(test)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
PUBLIC = {
    "ListDataset": "prm.data.batch",
    "ListBatch": "prm.data.batch",
    "ListInputs": "prm.data.batch",
    "ListData": "prm.data.loaders",
    "load_list_data": "prm.data.loaders",
    "DataError": "prm.data.tables",
    "ExplorationLog": "prm.data.exploration",
    "exploration_log": "prm.data.exploration",
    "read_randomization": "prm.data.exploration",
    "ExperimentConfig": "prm.config",
    "PRMConfig": "prm.config",
    "TrainConfig": "prm.config",
    "EvalConfig": "prm.config",
    "PretrainConfig": "prm.config",
    "EvaluatorConfig": "prm.config",
    "ConfigError": "prm.config",
    "load_config": "prm.config",
    "ListReranker": "prm.estimators",
    "PRMReranker": "prm.estimators",
    "PRM": "prm.models.prm",
    "ContextClickModel": "prm.models.evaluator",
    "PositionBasedModel": "prm.models.position_based",
    "RERANKERS": "prm.registry",
    "ModelSpec": "prm.registry",
    "fit_reranker": "prm.training.trainer",
    "pretrain": "prm.pretrain.training",
    "Pretrained": "prm.pretrain.training",
    "attach_pv": "prm.pretrain.training",
    "train_reranker": "prm.pipeline",
    "train_evaluator": "prm.pipeline",
    "load_reranker": "prm.pipeline",
    "demo": "prm.experiments.demo",
    "run_benchmark": "prm.experiments.run",
    "load_benchmark_config": "prm.experiments.config",
    "retraining_loop": "prm.deployment",
    "score_lists": "prm.evaluation.evaluate",
    "evaluate_scores": "prm.evaluation.evaluate",
    "ranking_metrics": "prm.evaluation.metrics",
    "rank_order": "prm.evaluation.metrics",
    "predicted_clicks": "prm.evaluation.estimate",
    "OffPolicyEvaluator": "prm.evaluation.offpolicy",
    "offpolicy_report": "prm.evaluation.offpolicy",
    "simulate": "prm.data.simulator",
    "load_predictor": "prm.serving.predictor",
    "export_bundle": "prm.serving.export",
}

__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'prm' has no attribute {name!r}")
    return getattr(importlib.import_module(PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
