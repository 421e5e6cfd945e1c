"""The README as a new user meets it: its two commands exist, and its quick commands run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _tested_blocks() -> list[str]:
    """Code blocks that follow a ``<!-- readme-test -->`` marker."""
    return re.findall(r"<!-- readme-test -->\s*```bash\n(.*?)```", README, flags=re.S)


def test_readme_states_exactly_the_two_setup_commands():
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_quick_commands_run_as_written(tmp_path):
    blocks = _tested_blocks()
    assert blocks, "the README marks no quick commands for this test"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's lexvla
    env["HF_HUB_OFFLINE"] = "1"
    for block in blocks:
        for line in block.strip().splitlines():
            command = line.split("  #")[0].strip()
            result = subprocess.run(
                command,
                shell=True,
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "tiny-ckpt" / "config.json").is_file()
    lines = (tmp_path / "vectors.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"vector"' in lines[0]


@pytest.mark.parametrize("path", re.findall(r"\]\(((?!http)[^)#]+)\)", README))
def test_linked_files_exist(path):
    assert (REPO / path).exists(), f"README links {path}, which does not exist"
