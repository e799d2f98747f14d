"""`prunerec analyze`: the MLP long-tail plot behind Stage II.

Per layer, the share of the total |up_proj output| held by the top k% intermediate channels
(k in 1, 5, 10, 20, 50), measured on training prompts + responses of the data.
"""
from __future__ import annotations

from pathlib import Path

from prunerec.compress.report import plot_long_tail
from prunerec.compress.stages import build_calibration
from prunerec.data.catalog import load_dataset
from prunerec.errors import PrunerecError
from prunerec.io import write_json
from prunerec.model.checkpoint import load_rec_model
from prunerec.model.encode import build_examples
from prunerec.train.sft import subsample

__all__ = ["PERCENTS", "run_analyze"]

PERCENTS = (1, 5, 10, 20, 50)


def run_analyze(model_ref, data_dir, out="long_tail.png", *, samples: int = 64, batch_size: int = 16,
                per_token: bool = True, seed: int = 0, percents=PERCENTS) -> dict:
    from prunerec.compress.importance import mlp_activation_share

    if samples <= 0 or batch_size <= 0:
        raise PrunerecError("--samples and --batch-size must be > 0")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PrunerecError(f"--out must name a .png file, got {out}")
    data = load_dataset(data_dir, splits=("train",))
    if not data["train"]:
        raise PrunerecError(f"split 'train' of {data_dir} has no rows")
    rec = load_rec_model(str(model_ref))
    if rec.catalog is not None and rec.catalog.titles != data.catalog.titles:
        raise PrunerecError(f"{model_ref} was trained for a different catalog than {data_dir}/items.jsonl")
    rows = subsample(data["train"], samples, seed + 1)
    calib = build_calibration(build_examples(rec.tokenizer, rows, data.catalog, rec.settings),
                              rec.tokenizer.pad_token_id, batch_size)
    shares = mlp_activation_share(rec.model, calib.full, percents=percents, per_token=per_token)
    cfg = rec.model.config
    result = {
        "model": str(model_ref), "data": str(data_dir), "samples": calib.n_samples,
        "intermediate_size": cfg.intermediate_size, "layers": cfg.num_hidden_layers,
        "per_token": per_token, "percents": list(percents),
        "share": [[round(float(x), 6) for x in row] for row in shares],
        "mean_share": {f"top{p}%": round(float(shares[:, j].mean()), 6) for j, p in enumerate(percents)},
    }
    how = "per token, averaged" if per_token else "summed over tokens"
    plot_long_tail(shares.tolist(), percents, out,
                   title=f"MLP activation long tail ({cfg.intermediate_size} channels, {how})")
    write_json(out.with_suffix(".json"), result)
    result["png"], result["json"] = str(out), str(out.with_suffix(".json"))
    return result
