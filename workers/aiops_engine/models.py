"""The multivariate layer: one pyod ECOD model per site class over site-minute feature vectors
(domain.MODEL_FEATURES), trained on recent normal minutes, persisted in aiops.model, retrained
on a schedule and swapped in without a restart.

* Examples: each closed site-minute of a site with no open anomaly goes into its class's
  reservoir (uniform reservoir sampling, `reservoir` vectors at most; memory only: a restarted
  worker refills it, the persisted model keeps scoring meanwhile).
* Training (every `retrain_s`, once a class has `min_train` examples): ECOD is fitted, the
  training scores kept (sorted) to turn a score into a tail probability, the model pickled into
  aiops.model as the class's next version.
* Swapping: the newest version of every class is loaded at start and re-read every `poll_s`, so
  a model trained by any replica replaces the one in use between two batches.
* Scoring: all the site-minutes closed by one fetched batch are scored in one call per class;
  the tail probability and ECOD's per-feature outlier scores (the explanation) go through
  `domain.model_step`'s hysteresis.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.aiops_engine import domain, store

log = logging.getLogger("towerco.aiops_engine.models")
ALGORITHM = "pyod.ECOD"


@dataclass
class Model:
    site_class: str
    version: int
    detector: Any  # a fitted pyod ECOD
    train_scores: np.ndarray  # sorted
    medians: np.ndarray
    samples: int

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tail probabilities (share of training minutes scoring at least as high) and the
        per-feature outlier scores of each row."""
        s = self.detector.decision_function(X)
        per_feature = np.asarray(self.detector.O)[-len(X):]
        n = len(self.train_scores)
        above = n - np.searchsorted(self.train_scores, s, side="left")
        return (above + 1) / (n + 1), per_feature

    def to_blob(self) -> bytes:
        return pickle.dumps({"detector": self.detector, "train_scores": self.train_scores, "medians": self.medians})

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Model:
        d = pickle.loads(row["blob"])  # noqa: S301 - our own table, written by this code
        return cls(row["site_class"], int(row["version"]), d["detector"], d["train_scores"], d["medians"],
                   int(row["samples"]))


def fit(site_class: str, X: np.ndarray, version: int = 0) -> Model:
    from pyod.models.ecod import ECOD

    det = ECOD()
    det.fit(X)
    return Model(site_class, version, det, np.sort(np.asarray(det.decision_scores_)), np.median(X, axis=0), len(X))


@dataclass
class ModelLayer:
    retrain_s: float = 3600.0
    poll_s: float = 30.0
    min_train: int = 2000
    reservoir: int = 5000
    params: domain.Params = field(default_factory=domain.Params)
    active: dict[str, Model] = field(default_factory=dict)
    examples: dict[str, list[list[float]]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)  # site -> last minute scored
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    # -- examples and scoring (called by the consumer with every site of a batch)

    def score_many(self, items: Sequence[tuple[str, domain.SiteCfg, domain.SiteState,
                                               Mapping[str, domain.Adjustment] | None]]
                   ) -> list[tuple[str, domain.Transition]]:
        """Take the site-minutes each state closed since the last call: keep the normal ones as
        examples, score them all (one call per site class) and run the hysteresis per site."""
        by_class: dict[str, list[tuple[str, domain.SiteCfg, domain.SiteState, Any, int, list]]] = {}
        for sid, cfg, st, adjust in items:
            if not st.features:
                continue
            pending, st.features = st.features, []
            cls = cfg.site_class
            normal = domain.trainable(st)
            for minute, values in pending:
                if normal and all(v is not None for v in values):
                    self._keep(cls, [float(v) for v in values])
                if cls in self.active:
                    by_class.setdefault(cls, []).append((sid, cfg, st, adjust, minute, values))
        out: list[tuple[str, domain.Transition]] = []
        for cls, rows in by_class.items():
            model = self.active[cls]
            X = np.array([[model.medians[i] if v is None else float(v) for i, v in enumerate(values)]
                          for *_, values in rows])
            tails, per_feature = model.score(X)
            for k, (sid, cfg, st, adjust, minute, _) in enumerate(rows):
                adj = (adjust or {}).get(domain.MODEL_DETECTOR, domain.NO_ADJUSTMENT)
                for tr in domain.model_step(st, cfg, minute, float(tails[k]), explain(model, X[k], per_feature[k]),
                                            model.version, self.params, adj):
                    out.append((sid, tr))
        return out

    def _keep(self, cls: str, v: list[float]) -> None:
        pool = self.examples.setdefault(cls, [])
        n = self.seen.get(cls, 0) + 1
        self.seen[cls] = n
        if len(pool) < self.reservoir:
            pool.append(v)
        else:
            j = self.rng.randrange(n)
            if j < self.reservoir:
                pool[j] = v

    # -- training and swapping

    async def load(self, pool) -> int:
        """Swap in every class's newest stored model that is newer than the one in use."""
        async with pool.acquire() as conn:
            rows = await store.latest_models(conn)
        swapped = 0
        for r in rows:
            cur = self.active.get(r["site_class"])
            if cur is None or cur.version < r["version"]:
                self.active[r["site_class"]] = await asyncio.to_thread(Model.from_row, r)
                swapped += 1
        return swapped

    async def train(self, pool, *, classes: Sequence[str] | None = None) -> list[Model]:
        """Fit and store a new version for every class with enough examples; swap them in."""
        out = []
        for cls in sorted(classes or self.examples):
            data = self.examples.get(cls, [])
            if len(data) < self.min_train:
                continue
            X = np.array(data, dtype=float)
            model = await asyncio.to_thread(fit, cls, X)
            async with pool.acquire() as conn:
                model.version = await store.save_model(conn, site_class=cls, algorithm=ALGORITHM,
                                                       features=domain.MODEL_FEATURES, samples=len(X),
                                                       blob=model.to_blob())
            self.active[cls] = model
            out.append(model)
            log.info("aiops model %s v%d trained on %d site-minutes", cls, model.version, len(X))
        return out

    async def run(self, engine) -> None:
        """Load the stored models, then retrain every retrain_s and poll for newer versions."""
        await self.load(engine.pool)
        loop = asyncio.get_running_loop()
        next_train = loop.time() + self.retrain_s
        while True:
            await asyncio.sleep(min(self.poll_s, max(0.1, next_train - loop.time())))
            try:
                if loop.time() >= next_train:
                    next_train = loop.time() + self.retrain_s
                    await self.train(engine.pool)
                await self.load(engine.pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the models in use keep scoring
                log.warning("aiops model training/loading failed: %s", exc)


def explain(model: Model, x: np.ndarray, per_feature: np.ndarray) -> list[domain.Feature]:
    """The features that drove a score, strongest first: observed value, the class's median, and
    each feature's share of the ECOD score."""
    total = float(per_feature.sum()) or 1.0
    order = np.argsort(-per_feature)
    return [domain.Feature(domain.MODEL_FEATURES[i], float(x[i]), float(model.medians[i]), 0.0,
                           float(per_feature[i]) / total) for i in order]
