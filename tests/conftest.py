"""Shared pytest fixtures: the duet binary, the build directory, the model."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("DUET_BUILD", ROOT / "build"))
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def duet_bin():
    path = BUILD / "cli" / "duet"
    if not path.exists():
        pytest.fail(f"{path} is not built: run scripts/build first")
    return str(path)


@pytest.fixture(scope="session")
def smollm2():
    if not MODEL.exists():
        subprocess.run([str(ROOT / "scripts" / "fetch-model")], check=True,
                       stdout=subprocess.DEVNULL)
    return str(MODEL)


def run_duet(duet_bin, *args, timeout=120, check=False, **kw):
    """Run the duet binary; returns CompletedProcess with text output."""
    return subprocess.run([duet_bin, *args], capture_output=True, text=True,
                          timeout=timeout, check=check, **kw)
