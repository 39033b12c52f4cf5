"""Personalized pre-training (PRM paper, Section 4.2): a CTR model whose hidden vector is PV.

A click-through-rate model is trained with a sigmoid and log loss on logged clicks, from the
user's profile, the user's click history and the item's features. The vector that feeds its
final sigmoid layer is the personalized vector PV(u, i) of item i for user u, an input of PRM.

Every model sees the same fields, each an ``embedding_dim`` vector:

- ``profile``: a linear map of the user's dense profile;
- ``history``: the masked mean of the id embeddings of the user's past clicks (zeros when the
  history is empty);
- ``item_id``: the candidate's id embedding, shared with the history so the two are comparable;
- ``item_dense``: a linear map of the candidate's dense features;
- ``topic_affinity`` (``PretrainConfig.topic_affinity``): a user-item cross feature, the log of
  the smoothed share of the user's history clicks on the candidate's topic, as production CTR
  models carry a user-category affinity. Without it the models must learn that match through
  low-rank products of embeddings, and PV carries the user's taste poorly (docs/simulator.md,
  "What PV carries").

With ``PretrainConfig.list_context`` the model also learns a per-user saturation s(u) >= 0
from the profile and history fields: in training the logit loses s(u) for each item of the
candidate's topic shown above it in the logged list, so the clicks' list context is not
mistaken for the item's appeal, and s(u) joins PV as its last coordinate (the layer before the
sigmoid then holds it). Ranking-time PV and the plain ``forward`` see no list context.

The lookup tables live in the model as buffers, so the model alone maps ``(user_id, item_id)``
to PV, with no value-dependent control flow (so that it exports to ONNX).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prm.config import PretrainConfig, from_dict, to_dict
from prm.data.tables import Catalog
from prm.models.layers import masked_mean, mlp

BASE_FIELDS = 4  # profile, history, item_id, item_dense; topic_affinity is a fifth


class Inputs(NamedTuple):
    """The raw inputs of a batch of ``B`` (user, item) pairs, looked up in the tables."""

    profile: torch.Tensor  # (B, d_profile)
    history: torch.Tensor  # (B, H) item ids
    history_mask: torch.Tensor  # (B, H) bool
    history_features: torch.Tensor  # (B, H, d_item) features of the history items
    item_ids: torch.Tensor  # (B,)
    item_features: torch.Tensor  # (B, d_item)
    topic_affinity: torch.Tensor  # (B, 1) log history share of the item's topic; (B, 0) without


class TableLookup(nn.Module):
    """The Catalog as buffers, so they travel with the state dict and an exported graph."""

    def __init__(self, tables: Catalog) -> None:
        super().__init__()
        self.register_buffer("profile", torch.as_tensor(tables.profile, dtype=torch.float32))
        self.register_buffer("history", torch.as_tensor(tables.history, dtype=torch.int64))
        self.register_buffer("history_mask", torch.as_tensor(tables.history_mask, dtype=torch.bool))
        self.register_buffer(
            "item_features", torch.as_tensor(tables.item_features, dtype=torch.float32)
        )
        self.has_topics = tables.item_topic is not None
        if self.has_topics:
            topic = torch.as_tensor(tables.item_topic, dtype=torch.int64)
            self.register_buffer("item_topic", topic)
            self.n_topics = int(topic.max()) + 1 if topic.numel() else 0

    def shapes(self) -> dict[str, int]:
        """Sizes that rebuild an empty model of this shape (see :func:`load_ctr`)."""
        shapes = {
            "n_users": self.profile.shape[0],
            "d_profile": self.profile.shape[1],
            "history_length": self.history.shape[1],
            "n_items": self.item_features.shape[0],
            "d_item": self.item_features.shape[1],
        }
        if self.has_topics:
            shapes["n_topics"] = self.n_topics
        return shapes

    def forward(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> Inputs:
        return self.inputs(
            self.profile[user_ids],
            self.history[user_ids],
            self.history_mask[user_ids],
            item_ids,
            self.item_features[item_ids],
        )

    def inputs(
        self,
        profile: torch.Tensor,
        history: torch.Tensor,
        history_mask: torch.Tensor,
        item_ids: torch.Tensor,
        item_features: torch.Tensor,
    ) -> Inputs:
        """Inputs of a user and item given by value (serving unknown users); only the history
        items (and the topics) are looked up, by id. Shapes as in :class:`Inputs`."""
        return Inputs(
            profile=profile,
            history=history,
            history_mask=history_mask,
            history_features=self.item_features[history],
            item_ids=item_ids,
            item_features=item_features,
            topic_affinity=self.topic_affinity(history, history_mask, item_ids),
        )

    def topic_affinity(
        self, history: torch.Tensor, history_mask: torch.Tensor, item_ids: torch.Tensor
    ) -> torch.Tensor:
        """(B, 1) log((h + 1) / (H + T)): h of the user's H history clicks share the
        candidate's topic, smoothed over the T topics; (B, 0) when items have no topics."""
        if not self.has_topics:
            return torch.zeros((item_ids.shape[0], 0), device=item_ids.device)
        same = self.item_topic[history] == self.item_topic[item_ids].unsqueeze(-1)  # (B, H)
        matches = (same & history_mask).sum(-1, keepdim=True).float()  # (B, 1)
        clicks = history_mask.sum(-1, keepdim=True).float()  # (B, 1)
        return torch.log((matches + 1.0) / (clicks + self.n_topics))


class FieldEmbedding(nn.Module):
    """The fields every model sees, each a ``dim`` vector; ``dim=1`` gives FM's weights."""

    def __init__(
        self,
        shapes: dict[str, int],
        dim: int,
        topic_affinity: bool = False,
        item_ids: bool = True,
    ) -> None:
        super().__init__()
        self.profile = nn.Linear(shapes["d_profile"], dim)
        self.item_id = nn.Embedding(shapes["n_items"], dim)
        self.item_dense = nn.Linear(shapes["d_item"], dim)
        nn.init.normal_(self.item_id.weight, std=0.01)  # small, so FM's products start near 0
        if not item_ids:  # the field stays, at zero: the model sees items by features alone
            nn.init.zeros_(self.item_id.weight)
            self.item_id.weight.requires_grad_(False)
        self.topic_affinity = nn.Linear(1, dim) if topic_affinity else None

    def forward(self, x: Inputs) -> torch.Tensor:
        fields = [
            self.profile(x.profile),  # (B, dim)
            # A history item is embedded like a candidate (id + features), so the pooled
            # history carries the user's topic mix even for rarely seen item ids.
            masked_mean(
                self.item_id(x.history) + self.item_dense(x.history_features),
                x.history_mask,
                dim=1,
            ),  # (B, H, dim) -> (B, dim)
            self.item_id(x.item_ids),  # (B, dim)
            self.item_dense(x.item_features),  # (B, dim)
        ]
        if self.topic_affinity is not None:
            fields.append(self.topic_affinity(x.topic_affinity))  # (B, dim)
        return torch.stack(fields, dim=1)  # (B, F, dim)


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """FM's pairwise term as a vector: 0.5 ((Σ_f v_f)² − Σ_f v_f²), (B, F, k) -> (B, k).

    Its coordinates sum to Σ_{f<g} <v_f, v_g>, the second-order part of the FM logit.
    """
    return 0.5 * (fields.sum(1).square() - fields.square().sum(1))


class CrossNetwork(nn.Module):
    """DCN's cross layers, x_{l+1} = x_0 (x_l · w_l) + b_l + x_l: explicit crosses of degree l+1."""

    def __init__(self, d: int, n_layers: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_layers, d) / math.sqrt(d))
        self.bias = nn.Parameter(torch.zeros(n_layers, d))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0  # (B, d)
        for layer in range(self.weight.shape[0]):
            x = x0 * (x @ self.weight[layer]).unsqueeze(-1) + self.bias[layer] + x  # (B, d)
        return x


class LogitLayer(nn.Module):
    """The input of the final sigmoid: bias + Σ hidden[:n_fixed] + w · hidden[n_fixed:].

    The first ``n_fixed`` coordinates (FM's terms) enter with weight 1, as in the FM and DeepFM
    papers; the rest through a learned linear layer to one unit.
    """

    def __init__(self, n_fixed: int, n_learned: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(max(n_learned, 1))
        self.register_buffer("fixed", torch.ones(n_fixed), persistent=False)
        self.weight = nn.Parameter(torch.empty(n_learned).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def d_in(self) -> int:
        return self.fixed.shape[0] + self.weight.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ torch.cat([self.fixed, self.weight]) + self.bias  # (B, d_pv) -> (B,)


@dataclass(frozen=True)
class FieldOptions:
    """What a CTR model sees beyond the four base fields (see the module docstring)."""

    topic_affinity: bool = False
    list_context: bool = False
    item_ids: bool = True


class CTRModel(nn.Module):
    """(user, item) -> PV = ``hidden`` -> click logit = ``output(PV)`` (less the saturation
    times the same-topic items above, when trained with list context)."""

    output: LogitLayer

    def __init__(self, tables: Catalog, embedding_dim: int, options: FieldOptions) -> None:
        super().__init__()
        self.tables = TableLookup(tables)
        if options.topic_affinity and not self.tables.has_topics:
            raise ValueError("topic_affinity needs Catalog.item_topic")
        self.fields = FieldEmbedding(
            self.tables.shapes(), embedding_dim, options.topic_affinity, options.item_ids
        )
        self.n_fields = BASE_FIELDS + options.topic_affinity
        # s(u) from the user's two fields, profile and history.
        self.saturation = nn.Linear(2 * embedding_dim, 1) if options.list_context else None

    @property
    def d_pv(self) -> int:
        return self.output.d_in + (self.saturation is not None)

    def hidden(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """(B,), (B,) -> (B, d_pv): the personalized vector, the input of the final sigmoid."""
        return self.hidden_from_inputs(self.tables(user_ids, item_ids))

    def hidden_raw(
        self,
        profile: torch.Tensor,
        history: torch.Tensor,
        history_mask: torch.Tensor,
        item_ids: torch.Tensor,
        item_features: torch.Tensor,
    ) -> torch.Tensor:
        """PV of users given by profile and history rather than by id, (B, d_pv): what serving
        computes for users absent from the tables. Shapes as in :class:`Inputs`."""
        inputs = self.tables.inputs(profile, history, history_mask, item_ids, item_features)
        return self.hidden_from_inputs(inputs)

    def hidden_from_inputs(self, x: Inputs) -> torch.Tensor:
        """(B, d_pv) PV of looked-up inputs: the model's hidden layer, then s(u) if any."""
        fields = self.fields(x)  # (B, F, k)
        hidden = self.hidden_from_fields(x, fields)
        if self.saturation is None:
            return hidden
        user = fields[:, :2].flatten(1)  # profile and history fields, (B, 2k)
        return torch.cat([hidden, F.softplus(self.saturation(user))], dim=-1)

    def hidden_from_fields(self, x: Inputs, fields: torch.Tensor) -> torch.Tensor:
        """(B, d_hidden) the layer before the sigmoid, from the (B, F, k) field embeddings;
        each model defines it."""
        raise NotImplementedError

    def click_logit(
        self, pv: torch.Tensor, same_topic_above: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) logit from PV, less s(u) per same-topic item above when that count is given."""
        logit = self.output(pv[:, : self.output.d_in])
        if self.saturation is None or same_topic_above is None:
            return logit
        return logit - pv[:, -1] * same_topic_above

    def forward(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """(B,), (B,) -> (B,) click logits of the item alone (no list context)."""
        return self.click_logit(self.hidden(user_ids, item_ids))


class FM(CTRModel):
    """Factorization machine (Rendle, ICDM 2010) over the four fields.

    PV = [w_1, ..., w_F, 0.5 ((Σ v_f)² − Σ v_f²)], (F + k): the first-order term of each field
    and the pairwise-interaction vector. The logit is their plain sum plus a bias, so PV is
    exactly FM's decomposition of its own score.
    """

    def __init__(self, tables: Catalog, embedding_dim: int, options: FieldOptions) -> None:
        super().__init__(tables, embedding_dim, options)
        self.first_order = FieldEmbedding(
            self.tables.shapes(), 1, options.topic_affinity, options.item_ids
        )
        self.output = LogitLayer(self.n_fields + embedding_dim, 0)

    def hidden_from_fields(self, x: Inputs, fields: torch.Tensor) -> torch.Tensor:
        first = self.first_order(x).squeeze(-1)  # (B, F, 1) -> (B, F)
        return torch.cat([first, fm_interaction(fields)], dim=-1)  # (B, F + k)


class DeepFM(CTRModel):
    """DeepFM (Guo et al., IJCAI 2017): an FM and a DNN sharing the field embeddings.

    PV = [FM first-order terms (F), FM interaction vector (k), DNN last layer (hidden_dims[-1])];
    the logit adds the FM terms with weight 1 and the DNN layer through a linear unit, as
    y = sigmoid(y_FM + y_DNN) in the paper.
    """

    def __init__(
        self,
        tables: Catalog,
        embedding_dim: int,
        options: FieldOptions,
        hidden_dims: tuple[int, ...],
    ) -> None:
        super().__init__(tables, embedding_dim, options)
        self.first_order = FieldEmbedding(
            self.tables.shapes(), 1, options.topic_affinity, options.item_ids
        )
        self.dnn = mlp(self.n_fields * embedding_dim, hidden_dims)
        self.output = LogitLayer(self.n_fields + embedding_dim, hidden_dims[-1])

    def hidden_from_fields(self, x: Inputs, fields: torch.Tensor) -> torch.Tensor:
        first = self.first_order(x).squeeze(-1)  # (B, F, 1) -> (B, F)
        deep = self.dnn(fields.flatten(1))  # (B, F * k) -> (B, h)
        return torch.cat([first, fm_interaction(fields), deep], dim=-1)  # (B, F + k + h)


class DCN(CTRModel):
    """Deep & Cross Network (Wang et al., ADKDD 2017): a cross network beside a DNN.

    PV = [cross network output (F * k), DNN last layer (hidden_dims[-1])], the paper's
    combination layer that feeds the final linear unit and sigmoid.
    """

    def __init__(
        self,
        tables: Catalog,
        embedding_dim: int,
        options: FieldOptions,
        hidden_dims: tuple[int, ...],
        cross_layers: int,
    ) -> None:
        super().__init__(tables, embedding_dim, options)
        d_x0 = self.n_fields * embedding_dim
        self.cross = CrossNetwork(d_x0, cross_layers)
        self.dnn = mlp(d_x0, hidden_dims)
        self.output = LogitLayer(0, d_x0 + hidden_dims[-1])

    def hidden_from_fields(self, x: Inputs, fields: torch.Tensor) -> torch.Tensor:
        x0 = fields.flatten(1)  # (B, F, k) -> (B, F * k)
        return torch.cat([self.cross(x0), self.dnn(x0)], dim=-1)  # (B, F * k + h)


class FNN(CTRModel):
    """Factorisation-machine supported neural network (Zhang et al., ECIR 2016).

    A DNN over the concatenated field embeddings; PV is its last hidden layer
    (hidden_dims[-1]). The paper initialises the embeddings from a trained FM; here they are
    learned end to end, which the same paper reports as a variant.
    """

    def __init__(
        self,
        tables: Catalog,
        embedding_dim: int,
        options: FieldOptions,
        hidden_dims: tuple[int, ...],
    ) -> None:
        super().__init__(tables, embedding_dim, options)
        self.dnn = mlp(self.n_fields * embedding_dim, hidden_dims)
        self.output = LogitLayer(0, hidden_dims[-1])

    def hidden_from_fields(self, x: Inputs, fields: torch.Tensor) -> torch.Tensor:
        return self.dnn(fields.flatten(1))  # (B, F * k) -> (B, h)


def build_ctr_model(config: PretrainConfig, tables: Catalog) -> CTRModel:
    """The CTR model named by ``config.model``, holding ``tables`` as buffers."""
    k, dims = config.embedding_dim, config.hidden_dims
    options = FieldOptions(config.topic_affinity, config.list_context, config.item_ids)
    match config.model:
        case "fm":
            return FM(tables, k, options)
        case "deepfm":
            return DeepFM(tables, k, options, dims)
        case "dcn":
            return DCN(tables, k, options, dims, config.cross_layers)
        case "fnn":
            return FNN(tables, k, options, dims)
    raise ValueError(f"unknown CTR model {config.model!r}")


def save_ctr(model: CTRModel, config: PretrainConfig, path: str | Path) -> None:
    """Write config, table shapes and state dict atomically (tmp file in the same dir, rename)."""
    path = Path(path)
    payload = {
        "config": to_dict(config),
        "table_shapes": model.tables.shapes(),
        "state_dict": model.state_dict(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_ctr(path: str | Path) -> CTRModel:
    """The model written by :func:`save_ctr`, tables included."""
    payload = torch.load(Path(path), weights_only=True)
    config = from_dict(PretrainConfig, payload["config"])
    shapes = payload["table_shapes"]
    placeholder = Catalog(
        profile=np.zeros((shapes["n_users"], shapes["d_profile"]), np.float32),
        history=np.zeros((shapes["n_users"], shapes["history_length"]), np.int64),
        history_mask=np.zeros((shapes["n_users"], shapes["history_length"]), bool),
        item_features=np.zeros((shapes["n_items"], shapes["d_item"]), np.float32),
        item_topic=(
            np.arange(shapes["n_items"]) % shapes["n_topics"] if "n_topics" in shapes else None
        ),
    )
    model = build_ctr_model(config, placeholder)
    model.load_state_dict(payload["state_dict"])
    return model
