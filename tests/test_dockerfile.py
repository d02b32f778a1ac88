"""The Dockerfile (also the Hugging Face Docker Space) read as text, since no Docker engine runs here.

It must build from what the repository holds and start the app the way a Space expects: the Python the
requirements are pinned for, every copied file present and not hidden by .dockerignore, requirements.txt
installed, the app on 0.0.0.0:7860 as a non-root user whose home holds the Hugging Face cache.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PORT = "7860"

TORCH_WHEEL_PYTHONS = {"2.14.1": {"3.10", "3.11", "3.12", "3.13", "3.14"}}
"""Pythons with torch manylinux x86_64 wheels on PyPI (`pip index versions torch --python-version X.Y`,
checked Nov 2026). A new torch pin must be checked again and added here."""


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def environment(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV variables the container starts with (ENV k=v ... and the old ENV k v form)."""
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword != "ENV":
            continue
        parts = shlex.split(instruction.args)
        if parts and "=" not in parts[0]:
            env[parts[0]] = _expand(" ".join(parts[1:]), env)
            continue
        for part in parts:
            key, _, value = part.partition("=")
            env[key] = _expand(value, env)
    return env


def _words(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str, list[str]]]:
    """(sources, destination, flags) of every COPY/ADD."""
    found = []
    for instruction in instructions:
        if instruction.keyword in ("COPY", "ADD"):
            words = _words(instruction.args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            found.append((paths[:-1], paths[-1], flags))
    return found


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (relative, posix) out of the build context (last match wins)."""
    result = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern]
        if pattern.startswith("**/"):
            candidates.append(pattern[3:])
        # A pattern matching a folder leaves out everything under it.
        if any(fnmatch.fnmatchcase(prefix, candidate) for prefix in prefixes for candidate in candidates):
            result = not negate
    return result


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "the repository root has no Dockerfile"
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), "a .dockerignore keeps tests, caches and .git out of the build context"
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_parser_reads_continuations_env_and_copies() -> None:
    sample = 'FROM a\n# note\nENV A=/x \\\n    B=$A/y\nCOPY --chown=u one two ./\nCMD ["p", "q"]\n'
    parsed = parse(sample)
    assert [i.keyword for i in parsed] == ["FROM", "ENV", "COPY", "CMD"]
    assert environment(parsed) == {"A": "/x", "B": "/x/y"}
    assert copies(parsed) == [(["one", "two"], "./", ["--chown=u"])]
    assert ignored("tests/test_x.py", ["tests"]) and ignored("a/__pycache__/b.pyc", ["**/__pycache__"])
    assert not ignored("examples/x.png", ["examples/make_examples.py"])
    assert not ignored("keep.py", ["*.py", "!keep.py"])


def test_base_image_is_the_python_the_requirements_are_pinned_for(instructions: list[Instruction]) -> None:
    bases = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(bases) == 1, f"one stage expected, found {bases}"
    match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", bases[0])
    assert match, f"base image {bases[0]} is not an official python:X.Y-slim image"
    python = match.group(1)
    assert python == "3.11"
    found = re.search(r'^requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml states no requires-python"
    requires = found.group(1)
    assert SpecifierSet(requires).contains(f"{python}.0"), f"pyproject.toml requires {requires}"
    torch = _pins()["torch"]
    assert "+cpu" not in torch, "a CPU-only torch would leave a GPU Space unused"
    assert torch in TORCH_WHEEL_PYTHONS, f"torch=={torch}: check which Pythons it has wheels for"
    assert python in TORCH_WHEEL_PYTHONS[torch]


def test_requirements_are_installed_after_being_copied(instructions: list[Instruction]) -> None:
    keywords = [(i.keyword, i.args) for i in instructions]
    copy_at = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and "requirements.txt" in _words(a))
    install_at = next(
        n
        for n, (k, a) in enumerate(keywords)
        if k == "RUN" and re.search(r"pip install .*-r requirements\.txt", a)
    )
    assert copy_at < install_at
    install = keywords[install_at][1]
    assert "--no-cache-dir" in install
    assert "--index-url" not in install and "download.pytorch.org" not in install


def test_every_copied_file_exists_and_is_in_the_build_context(
    instructions: list[Instruction], dockerignore: list[str]
) -> None:
    sources = [source for paths, _, _ in copies(instructions) for source in paths]
    assert sources, "nothing is copied into the image"
    assert "app.py" in sources, "the image must contain app.py"
    for source in sources:
        assert not source.startswith(("/", "..")) and "*" not in source, source
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not ignored(source.rstrip("/"), dockerignore), f"COPY {source}: left out by .dockerignore"
        if path.is_dir():
            assert any(p.is_file() for p in path.rglob("*")), f"COPY {source}: an empty folder is not in git"
    for needed in ("pixelrefer", "examples", "assets"):
        assert any(s.rstrip("/") == needed for s in sources), f"{needed}/ is not copied"


def test_the_app_and_its_examples_reach_the_image(dockerignore: list[str]) -> None:
    assert (ROOT / "app.py").is_file(), "app.py is missing"
    assert not ignored("app.py", dockerignore)
    for module in (ROOT / "pixelrefer").rglob("*.py"):
        assert not ignored(module.relative_to(ROOT).as_posix(), dockerignore), module.name
    manifest = json.loads((ROOT / "examples" / "examples.json").read_text())
    files = ["examples/examples.json"]
    for entry in manifest:
        files.append(f"examples/{entry['file']}")
        files += [f"examples/{m}" for obj in entry["objects"] for m in obj["masks"].values()]
    for file in files:
        assert not ignored(file, dockerignore), f"{file} would be missing from the image"
    for kept_out in ("tests/test_dockerfile.py", ".git/HEAD", "bench/x.py", "pixelrefer/__pycache__/a.pyc"):
        assert ignored(kept_out, dockerignore), f"{kept_out} should stay out of the image"


def test_runs_as_a_non_root_user_with_a_writable_home(instructions: list[Instruction]) -> None:
    keywords = [i.keyword for i in instructions]
    cmd_at = max(n for n, k in enumerate(keywords) if k in ("CMD", "ENTRYPOINT"))
    users = [(n, i.args) for n, i in enumerate(instructions) if i.keyword == "USER" and n < cmd_at]
    assert users, "no USER before CMD: the app would run as root"
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0")
    created = [i.args for i in instructions if i.keyword == "RUN" and "useradd" in i.args]
    assert created, "the user is never created"
    useradd = shlex.split(created[0].split("&&")[0])
    assert useradd[-1] == user and "-m" in useradd, created[0]
    assert "-u" in useradd and useradd[useradd.index("-u") + 1] == "1000", "Spaces run as uid 1000"
    env = environment(instructions)
    home = PurePosixPath(env.get("HOME", ""))
    assert home == PurePosixPath("/home") / user, f"HOME is {home}"
    hf_home = PurePosixPath(env.get("HF_HOME", ""))
    assert hf_home.is_relative_to(home) and hf_home != home, f"HF_HOME {hf_home} is not under {home}"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_app_serves_on_all_interfaces_port_7860(instructions: list[Instruction]) -> None:
    exposed = [word for i in instructions if i.keyword == "EXPOSE" for word in i.args.split()]
    assert PORT in exposed or f"{PORT}/tcp" in exposed
    (cmd,) = [i for i in instructions if i.keyword == "CMD"]
    assert not any(i.keyword == "ENTRYPOINT" for i in instructions)
    assert cmd.args.startswith("["), "exec form, so the app gets signals (a Space stops it with SIGTERM)"
    words = json.loads(cmd.args)
    assert words[:2] == ["python", "app.py"]
    env = environment(instructions)
    host = words[words.index("--host") + 1] if "--host" in words else env.get("GRADIO_SERVER_NAME")
    port = words[words.index("--port") + 1] if "--port" in words else env.get("GRADIO_SERVER_PORT")
    assert (host, port) == ("0.0.0.0", PORT)
    assert env.get("GRADIO_SERVER_NAME") == "0.0.0.0" and env.get("GRADIO_SERVER_PORT") == PORT
    workdir = [i.args for i in instructions if i.keyword == "WORKDIR"][-1]
    app_copy = [dest for paths, dest, _ in copies(instructions) if "app.py" in paths]
    assert app_copy and app_copy[0] in ("./", ".", workdir, workdir + "/"), "app.py is not in the WORKDIR"
