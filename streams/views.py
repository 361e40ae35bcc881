"""Web views on the worker: the latest list of a user, liveness, readiness, the ranker's weights, an item's
click-through rate, Prometheus metrics."""

from __future__ import annotations

from typing import Any

import faust
import orjson
from faust.types import TableT
from faust.web import Request, Response, View

from streams.runtime import Runtime
from xrec.ranking import FEATURES


def register_views(app: faust.App, runtime: Runtime, profiles: TableT) -> None:
    @app.page("/recommendations/{user_id}")
    class RecommendationsView(View):
        """The latest list this worker published for a user (404 if none since it started)."""

        async def get(self, request: Request, user_id: str) -> Response:
            published = runtime.latest.get(user_id)
            if published is None:
                known = user_id.encode() in profiles
                return self.json(
                    {"user_id": user_id, "error": "no list published by this worker yet", "profile": known}, status=404
                )
            return self.bytes(published, content_type="application/json")

    @app.page("/healthz")
    class HealthView(View):
        """Alive: the process answers HTTP."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class ReadyView(View):
        """Ready once tables are recovered, the store and model are loaded and the store answers, items
        are caught up and no consumer loop is failing (the failing ones are named with their last error)."""

        async def get(self, request: Request) -> Response:
            checks = readiness(app, runtime)
            ready = all(checks.values())
            runtime.metrics.set_ready(ready)
            body: dict[str, Any] = {"ready": ready, "checks": checks}
            if runtime.loops.failing:
                body["failing"] = runtime.loops.failing  # loop → its last error
            return self.bytes(
                orjson.dumps(body),
                content_type="application/json",
                status=200 if ready else 503,
            )

    @app.page("/ranker")
    class RankerView(View):
        """The ranker's weights: hand-set, in use, and what was learned (by this worker and the others)."""

        async def get(self, request: Request) -> Response:
            engine = runtime.recommender
            ranker = engine.ranker
            body = {
                "learned_in_variants": sorted(engine.learned),
                "learning": runtime.settings.ranker_learning if engine.learned else "off",
                "generation": runtime.settings.ranker_generation,
                "features": list(FEATURES),
                "hand_set": ranker.initial.tolist(),
                "weights": ranker.weights().tolist(),
                "learned_here": ranker.own.tolist(),
                "learned_elsewhere": ranker.others.tolist(),
                "updates": ranker.updates,
            }
            return self.bytes(orjson.dumps(body), content_type="application/json")

    @app.page("/click-through/{item_id}")
    class ClickThroughView(View):
        """An item's impressions and clicks (every worker's, and this one's) and the rates ranking uses."""

        async def get(self, request: Request, item_id: str) -> Response:
            explained = await runtime.recommender.click_through_of(item_id)
            if explained is None:
                return self.json({"item_id": item_id, "error": "not in the catalog"}, status=404)
            return self.bytes(orjson.dumps(explained), content_type="application/json")

    @app.page("/metrics")
    class MetricsView(View):
        """Prometheus exposition of this worker's metrics."""

        async def get(self, request: Request) -> Response:
            runtime.metrics.set_ready(all(readiness(app, runtime).values()))
            runtime.metrics.set_store_reachable(runtime.store.reachable)
            body, content_type = runtime.metrics.render(request.headers.get("Accept"))
            return self.bytes(body, headers={"Content-Type": content_type})


def readiness(app: faust.App, runtime: Runtime) -> dict[str, Any]:
    recovery = app.tables.recovery  # type: ignore[attr-defined]  # TableManager has it, TableManagerT does not
    return {
        "store_and_model": runtime.started,
        "store_reachable": runtime.store.reachable,
        "tables_recovered": bool(recovery.completed.is_set()) and not app.rebalancing,
        "items_caught_up": runtime.items_caught_up,
        "consumer_loops": not runtime.loops.failing,
    }
