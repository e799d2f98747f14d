"""A Qwen2-0.5B-shaped recommender and its compression at the paper's target shape, with random
weights, for serving-speed benchmarks (bench/serve_engines.py --pair BASE PRUNED).

BASE: the published Qwen2-0.5B shape (24 layers, hidden 896, 14 q / 2 kv heads of 64, MLP 4,864,
151,936-row tied vocabulary) with the real Qwen2 tokenizer, the Alpaca prompt and the Games
catalog. PRUNED: the same model cut by prunerec.model.surgery to the default PruneRec target
(7 q / 1 kv heads, hidden 448, MLP 896, 8 layers: 13,316,032 non-embedding parameters), keeping
the first heads, dimensions, channels and layers: speed does not depend on which are kept.
Random weights (no hub here): quality means nothing, only the cost per request does.

Usage: python bench/qwen2_pair.py --out /tmp/qwen2-pair     # writes OUT/base and OUT/pruned
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunerec.data.catalog import load_catalog  # noqa: E402
from prunerec.model.checkpoint import RecModel  # noqa: E402
from prunerec.model.prompt import PromptSettings  # noqa: E402
from prunerec.model.surgery import (  # noqa: E402
    count_parameters,
    keep_attention_heads,
    keep_hidden,
    keep_mlp_channels,
    remove_layers,
)

SHARED = ROOT.parent / "shared"
QWEN2 = SHARED / "models" / "qwen2-0.5b"
GAMES = SHARED / "data" / "amazon-games"
TARGET = {"heads": 7, "kv_heads": 1, "hidden": 448, "mlp": 896, "layers": 8}


def build_base(model_dir: Path):
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval(), AutoTokenizer.from_pretrained(model_dir)


def cut_to_target(model) -> None:
    """Surgery to TARGET, keeping the first of everything (KV group 0 and its first query heads)."""
    cfg = model.config
    layers = cfg.num_hidden_layers
    keep_attention_heads(model, [[0]] * layers, [list(range(TARGET["heads"]))] * layers)
    keep_hidden(model, torch.arange(TARGET["hidden"]))
    keep_mlp_channels(model, [torch.arange(TARGET["mlp"])] * layers)
    remove_layers(model, list(range(TARGET["layers"], layers)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=QWEN2, help="config + tokenizer of the base shape")
    parser.add_argument("--data", type=Path, default=GAMES, help="data set whose catalog the models serve")
    args = parser.parse_args()
    catalog = load_catalog(args.data / "items.jsonl")
    settings = PromptSettings(template="alpaca", category="games", max_history=10, cutoff_tokens=512)
    model, tokenizer = build_base(args.model)
    for name in ("base", "pruned"):
        if name == "pruned":
            cut_to_target(model)
        RecModel(model, tokenizer, catalog, settings, {"base": f"random {args.model.name} shape"}).save(args.out / name)
        print(name, count_parameters(model), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
