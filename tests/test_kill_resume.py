"""SIGKILL real `prunerec train` and `prunerec compress` processes at seeded random moments (some
inside a checkpoint save, after the weights and optimizer and before state.json, or while the
result is published), resume each with --resume, and require the final weights to equal, bit for
bit, those of an unbroken run.

Moments are drawn uniformly over the unbroken run's wall time. A chain of runs in one folder is
killed at moment after moment, each run resuming the last, until one run ends by itself; its
weights are then compared; new chains start until enough kills have landed. The runs are forked
from one process that imported the libraries once (tests/fork_runner.py): each is still a real
process, killed for real, without seconds of imports each. The tiny preset and budgets of a few
steps keep the test to a few minutes on a busy 2-core machine.
"""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--model", "tiny", "--max-steps", "16", "--eval-every", "4", "--batch-size", "8", "--train-limit", "64",
         "--valid-limit", "8", "--warmup", "2", "--seed", "3"]
COMPRESS = ["--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--train-limit", "32", "--valid-limit", "8",
            "--eval-users", "0", "--calib-samples", "8", "--calib-batch-size", "4", "--warmup", "1"]
TRAIN_HOOKS = ["checkpoint:1", "checkpoint:2", "publish:2", "checkpoint:1"]
COMPRESS_HOOKS = ["checkpoint:2", "checkpoint:1", "checkpoint:3"]
TRAIN_KILLS, COMPRESS_KILLS = 12, 10


class ForkRunner:
    def __init__(self, logs: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "PRUNEREC_DEVICE": "cpu"}
        env.pop("PRUNEREC_TEST_KILL_AT", None)
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fork_runner.py")], env=env, cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.logs, self.count = logs, 0

    def run(self, args, hook=None, kill_after=None) -> dict:
        self.count += 1
        log = self.logs / f"run{self.count:03d}.log"
        request = {"args": [str(a) for a in args], "log": str(log), "hook": hook, "kill_after": kill_after}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        answer["log"] = log
        return answer

    def finish(self, args) -> float:
        answer = self.run(args)
        assert answer["code"] == 0, answer["log"].read_text()[-3000:]
        return answer["seconds"]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _assert_same_weights(folder: Path, reference: Path) -> None:
    got, want = load_file(str(folder / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].equal(tensor), f"{folder}: {name}"


def _chains(runner: ForkRunner, command: str, fixed: list, root: Path, unbroken_s: float, kills_wanted: int,
            hooks: list[str], rng: random.Random, check) -> int:
    """Chains of killed and resumed runs until `kills_wanted` kills landed; returns the kills."""
    kills, n = 0, 0
    while kills < kills_wanted:
        out, resume = root / f"{command}{n}", []
        n += 1
        while True:
            if resume and hooks:  # a kill inside a save (the hook fires only where the point is reached)
                answer = runner.run([command, *fixed, "--out", out, *resume], hook=hooks.pop(0))
                assert answer["code"] in (-signal.SIGKILL, 0), answer["log"].read_text()[-3000:]
                kills += answer["code"] == -signal.SIGKILL
                if answer["code"] == 0:
                    break
            answer = runner.run([command, *fixed, "--out", out, *resume], kill_after=rng.uniform(0, unbroken_s))
            resume = ["--resume"]
            if answer["code"] is None:
                kills += 1
                continue
            assert answer["code"] == 0, answer["log"].read_text()[-3000:]
            break
        check(out)
        assert not [p for p in out.rglob("*") if ".prunerec-tmp" in p.name]  # swept by the resumes
    print(f"{command}: {kills} kills in {n} chains, each ending bit-identical")
    return kills


@pytest.mark.timeout(600)
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(tmp_path):
    from prunerec.data.demo import write_demo

    rng = random.Random(15)
    data = write_demo(tmp_path / "data", n_items=300, n_users=200)
    (tmp_path / "logs").mkdir()
    runner = ForkRunner(tmp_path / "logs")
    try:
        train = ["--data", data, *TRAIN]
        reference = tmp_path / "unbroken"
        train_s = runner.finish(["train", *train, "--out", reference])
        kills = _chains(runner, "train", train, tmp_path, train_s, TRAIN_KILLS, list(TRAIN_HOOKS), rng,
                        lambda out: _assert_same_weights(out, reference))

        compress = ["--model", reference, "--data", data, *COMPRESS]
        pruned = tmp_path / "pruned"
        compress_s = runner.finish(["compress", *compress, "--out", pruned])

        def same_stages(out):
            for stage in ("stage1", "stage2", "stage3", "final"):
                _assert_same_weights(out / stage, pruned / stage)

        kills += _chains(runner, "compress", compress, tmp_path, compress_s, COMPRESS_KILLS, list(COMPRESS_HOOKS),
                         rng, same_stages)
    finally:
        runner.close()
    assert kills >= 20
