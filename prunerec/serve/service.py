"""One recommendation, engine-agnostic: history -> prompt -> constrained beam search on the
engine -> k distinct catalog items; L2 grounding of a free generation fills the list when the
constrained search finds fewer than k titles."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from prunerec.model.prompt import parse_response
from prunerec.options import BEAMS
from prunerec.serve.engines import Deadline, Engine, L2Grounder, grounder_for
from prunerec.serve.model import InputError, ServeModel

log = logging.getLogger("prunerec.serve")

MAX_K = 50


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class RecommendService:
    def __init__(self, sm: ServeModel, engine: Engine, beams: int = BEAMS, grounder: L2Grounder | None = None,
                 count_tokens: Callable[[int], None] | None = None):
        self.sm, self.engine, self.beams = sm, engine, int(beams)
        self.count_tokens = count_tokens or (lambda n: None)  # e.g. the engine-tokens Prometheus counter's inc
        self.grounder = grounder if grounder is not None else grounder_for(sm, engine)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= MAX_K:
            raise InputError(f"k must be between 1 and {MAX_K}, got {k}")
        if k > len(self.sm.titles):
            raise InputError(f"k={k} is more than the {len(self.sm.titles)} distinct titles in the catalog")

    def free_generation(self, prompt: Sequence[int], deadline: Deadline) -> dict:
        tokens = self.engine.generate(prompt, self.sm.free_tokens, deadline)
        self.count_tokens(len(tokens))
        text = self.sm.decode(tokens)
        title = parse_response(text)
        return {"text": text, "title": title, "token_ids": tokens,
                "in_catalog": self.sm.catalog.first_id(title) is not None}

    def recommend(self, history: Sequence[int | str], k: int, free_generation: bool = False,
                  deadline: Deadline | None = None) -> dict:
        """The response body of POST /v1/recommend (raises InputError, engines.Cancelled)."""
        started = time.perf_counter()
        deadline = deadline or Deadline()
        self.check_k(k)
        if not history:
            raise InputError("history is empty: send at least one item id or title")
        ids = self.sm.resolve_history(history)
        used = ids[-self.sm.max_history:]
        prompt = self.sm.prompt(used)
        num_beams = max(k, self.beams)

        t0 = time.perf_counter()
        ranked = self.engine.rank(prompt, num_beams, deadline)
        search_s = time.perf_counter() - t0
        self.count_tokens(sum(len(self.sm.responses[index]) for index, _ in ranked if index is not None))
        items, seen = [], set()
        for index, score in ranked:
            if index is None or index in seen:
                continue
            seen.add(index)
            item_id, title = self.sm.item_of(index)
            items.append({"id": item_id, "title": title, "score": float(score), "method": "trie",
                          "generation": self.sm.generations[index]})
            if len(items) == k:
                break

        free, fallback, fallback_s = None, None, 0.0
        if len(items) < k or free_generation:
            t0 = time.perf_counter()
            free = self.free_generation(prompt, deadline)
            if len(items) < k:
                if self.grounder.available:
                    for index, distance in self.grounder.rank(free["title"], len(self.sm.titles)):
                        if index in seen:
                            continue
                        seen.add(index)
                        item_id, title = self.sm.item_of(index)
                        items.append({"id": item_id, "title": title, "score": -float(distance), "method": "l2",
                                      "generation": free["text"]})
                        if len(items) == k:
                            break
                    fallback = "l2"
                else:
                    fallback = "unavailable: no PyTorch weights for L2 grounding beside the served model"
            fallback_s = time.perf_counter() - t0

        methods = {"trie": sum(i["method"] == "trie" for i in items), "l2": sum(i["method"] == "l2" for i in items)}
        return {
            "items": items,
            "k": k,
            "num_beams": num_beams,
            "methods": methods,
            "fallback": fallback,
            "history_used": used,
            "history_truncated": len(ids) > len(used),
            "free_generation": free,
            "engine": self.engine.name,
            "timing": {"search_ms": _ms(search_s), "fallback_ms": _ms(fallback_s),
                       "service_ms": _ms(time.perf_counter() - started)},
        }

    def warm_up(self) -> dict:
        """One real request (the first catalog item as history), through the whole path."""
        return self.recommend([self.sm.first_ids[0]], 1)
