"""Offline evaluation: HR@K / NDCG@K by trie-constrained beam search and by L2 grounding,
the out-of-catalog rate of free generation, and a popularity baseline, on one split."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from prunerec import distributed
from prunerec.data.catalog import Catalog, Sample, load_dataset
from prunerec.errors import PrunerecError
from prunerec.evaluate import metrics
from prunerec.evaluate.options import EvalOptions
from prunerec.evaluate.parallel import map_in_order, usable_cores
from prunerec.io import write_json, write_text
from prunerec.model.checkpoint import RecModel, load_rec_model
from prunerec.model.encode import history_titles, prompt_ids
from prunerec.search.beam import constrained_beam_search
from prunerec.search.grounding import embed_texts, free_generate, free_token_budget, l2_rank
from prunerec.search.shared_prompt import make_stepper
from prunerec.search.title_index import TitleIndex


class Recommender:
    """A model bound to its catalog: prompts in, ranked titles out (the serving path too)."""

    def __init__(self, rec: RecModel, catalog: Catalog):
        self.rec, self.catalog = rec, catalog
        self.index = TitleIndex.of_catalog(rec.tokenizer, catalog)
        self.titles, self.trie = self.index.titles, self.index.trie
        self._title_embeddings = None

    def prompts(self, samples: Sequence[Sample]) -> list[list[int]]:
        return prompt_ids(self.rec.tokenizer, [history_titles(s, self.catalog) for s in samples], self.rec.settings)

    def rank_trie(self, prompts, num_beams: int) -> list[list[tuple[str, float]]]:
        stepper = make_stepper(self.rec.model, self.rec.tokenizer.pad_token_id)
        ranked = constrained_beam_search(stepper, prompts, self.trie, num_beams)
        return [[(self.titles[i], score) for i, score in row] for row in ranked]

    def prepare_l2(self) -> None:
        """Embed every catalog title once (before worker processes fork, so they share it)."""
        if self._title_embeddings is None:
            self._title_embeddings = embed_texts(self.rec.model, self.rec.tokenizer, self.titles)

    def rank_l2(self, prompts, k: int) -> tuple[list[str], list[list[str]]]:
        self.prepare_l2()
        generated = free_generate(self.rec.model, self.rec.tokenizer, prompts,
                                  free_token_budget(self.trie.max_len))
        query = embed_texts(self.rec.model, self.rec.tokenizer, [g or " " for g in generated])
        return generated, [[self.titles[i] for i in row] for row in l2_rank(query, self._title_embeddings, k)]


def pick_users(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    if not limit or limit >= len(samples):
        return samples
    return sorted(random.Random(seed).sample(samples, limit), key=lambda s: s.user)


def _ranked_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[str], ks) -> list[dict]:
    return [metrics.user_metrics(metrics.hit_rank(r, t), ks) for r, t in zip(rankings, targets)]


def _summary(rows: list[dict], options: EvalOptions, seconds: float | None) -> dict:
    out = {"metrics": metrics.average(rows),
           "ci95": {k: list(v)
                    for k, v in metrics.bootstrap_ci(rows, samples=options.bootstrap, seed=options.seed).items()}}
    if seconds is not None:
        out["seconds"] = round(seconds, 2)
        out["users_per_second"] = round(len(rows) / max(seconds, 1e-9), 3)
    return out


def report_user_rows(report: dict, titles: Sequence[str], grounding: str = "trie") -> list[dict]:
    """Per-user metrics recomputed from a report's stored rankings (targets are item ids, hits
    count on titles), for paired comparisons of two reports on the same users."""
    return [metrics.user_metrics(metrics.hit_rank(r[grounding], titles[r["target"]])) for r in report["rankings"]]


def popularity_titles(catalog: Catalog, train: Sequence[Sample], k: int) -> list[str]:
    ranked, seen = [], set()
    for item in metrics.popularity_ranking([s.target for s in train], len(catalog)):
        title = catalog.title(item)
        if title not in seen:
            seen.add(title)
            ranked.append(title)
        if len(ranked) == k:
            break
    return ranked


def length_batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of the prompts in batches of similar lengths (less padding in every batch)."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def rank_users(recommender: Recommender, prompts: Sequence[Sequence[int]], grounding: str, options: EvalOptions,
               on_users: Callable[[int], None] | None = None) -> list:
    """One result per prompt, in order: [(title, score)] for trie, (generated text, [title]) for l2.

    Users are batched by prompt length and the batches spread over ``options.workers`` processes.
    """
    def rank_batch(batch: list[list[int]]) -> list:
        if grounding == "trie":
            return recommender.rank_trie(batch, options.num_beams)
        return list(zip(*recommender.rank_l2(batch, max(options.ks))))

    if grounding == "l2":
        recommender.prepare_l2()
    workers = options.workers or usable_cores()
    if next(recommender.rec.model.parameters()).device.type != "cpu" or distributed.world_size() > 1:
        workers = 1  # one process per accelerator; torchrun ranks already share the cores
    batches = length_batches(prompts, options.batch_size)
    ranked = map_in_order(rank_batch, [[prompts[i] for i in batch] for batch in batches], workers,
                          on_result=(lambda item, _: on_users(len(item))) if on_users else None)
    out: list = [None] * len(prompts)
    for batch, results in zip(batches, ranked):
        for i, result in zip(batch, results):
            out[i] = result
    return out


def evaluate_model(rec: RecModel, data_dir: str | Path, options: EvalOptions,
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """``on_batch(n)``: n more users ranked (once per batch and grounding)."""
    data = load_dataset(data_dir, splits=("train", options.split))
    if rec.catalog is not None and rec.catalog.titles != data.catalog.titles:
        raise PrunerecError(f"the model was trained for a different catalog than {data_dir}/items.jsonl")
    users = pick_users(data[options.split], options.limit, options.seed)
    if not users:
        raise PrunerecError(f"split '{options.split}' of {data_dir} has no rows")
    recommender = Recommender(rec, data.catalog)
    targets = [data.catalog.title(s.target) for s in users]
    depth = max(options.ks)
    prompts = recommender.prompts(users)
    rankings: dict[str, list] = {}
    generated: list[str] = []
    seconds = {}
    for g in options.groundings:
        bar = tqdm(total=len(users), desc=f"evaluate {options.split} ({g})", unit="user", dynamic_ncols=True)

        def done(n: int, bar=bar) -> None:
            bar.update(n)
            if on_batch:
                on_batch(n)

        t0 = time.perf_counter()
        results = rank_users(recommender, prompts, g, options, done)
        seconds[g] = time.perf_counter() - t0
        bar.close()
        if g == "trie":
            rankings[g] = [[title for title, _ in row] for row in results]
        else:
            generated = [text for text, _ in results]
            rankings[g] = [ranked for _, ranked in results]
    popular = popularity_titles(data.catalog, data["train"], depth)
    popular_rows = _ranked_metrics([popular] * len(users), targets, options.ks)
    results = {}
    for g in options.groundings:
        rows = _ranked_metrics(rankings[g], targets, options.ks)
        results[g] = {**_summary(rows, options, seconds[g]), "over_popularity": metrics.ratios(
            rows, popular_rows, samples=options.bootstrap, seed=options.seed)}
    results["popularity"] = _summary(popular_rows, options, None)
    report = {"split": options.split, "users": len(users), "num_beams": options.num_beams,
              "catalog_titles": len(recommender.titles), "results": results,
              "rankings": [{"user": s.user, "target": s.target,
                            **{g: rankings[g][i][:depth] for g in options.groundings}}
                           for i, s in enumerate(users)]}
    if generated:
        titles = set(recommender.titles)
        report["out_of_catalog_rate"] = sum(g not in titles for g in generated) / len(generated)
        report["examples_free_generation"] = generated[:5]
    return report


def format_table(report: dict, ks=(1, 3, 5, 10, 20)) -> str:
    names = {"trie": "constrained beam", "l2": "L2 grounding", "popularity": "popularity"}
    header = ["method"] + [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["users/s"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for key, result in report["results"].items():
        m = result["metrics"]
        speed = f"{result['users_per_second']:.2f}" if "users_per_second" in result else "-"
        lines.append(" | ".join([names.get(key, key)] + [f"{m[f'HR@{k}']:.4f}" for k in ks]
                                + [f"{m[f'NDCG@{k}']:.4f}" for k in ks] + [speed]))
    lines = ["| " + line + " |" for line in lines]
    tail = [f"{report['users']} users of split '{report['split']}', {report['num_beams']} beams, "
            f"{report['catalog_titles']} catalog titles"]
    for key, result in report["results"].items():
        over = result.get("over_popularity", {})
        if "HR@10" in over and "NDCG@10" in over:
            tail.append(f"{names.get(key, key)} / popularity: " + ", ".join(
                f"{k} {over[k]['ratio']:.2f}x [{over[k]['ci95'][0]:.2f}, {over[k]['ci95'][1]:.2f}]"
                for k in ("HR@10", "NDCG@10")))
    if "out_of_catalog_rate" in report:
        tail.append(f"free generation out-of-catalog rate: {report['out_of_catalog_rate']:.3f}")
    return "\n".join(lines + [""] + tail)


def evaluate_path(model_ref: str, data_dir: str | Path, options: EvalOptions) -> dict:
    rec = load_rec_model(model_ref)
    rec.model.eval()
    report = evaluate_model(rec, data_dir, options)
    report["model"] = str(model_ref)
    return report


def run_evaluate(model_ref, data_dir, *, out=None, **options) -> tuple[dict, str]:
    """`prunerec evaluate`: the report and its table (also written to `out` and its .md, when given);
    `options` are EvalOptions fields (split, grounding, beams, batch_size, workers, limit, seed)."""
    options = EvalOptions(**options).check()
    report = evaluate_path(model_ref, data_dir, options)
    table = format_table(report)
    if out:
        write_json(out, report)
        write_text(Path(out).with_suffix(".md"), table + "\n")
    return report, table
