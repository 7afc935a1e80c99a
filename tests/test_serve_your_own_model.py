"""The README's "Serve your own model", step by step, on a real server: no code, a folder."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import httpx
import pytest

from sluiceway.cli import main
from tests.fixtures.live_server import live_server
from tests.fixtures.onnx_models import linear_model

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = README.split("## Serve your own model", 1)[1].split("\n## ", 1)[0]


def readme_block(language: str, index: int = 0) -> str:
    """The ``index``-th fenced block of ``language`` in the section, dedented."""
    blocks = re.findall(rf"```{language}\n(.*?)```", SECTION, flags=re.DOTALL)
    return textwrap.dedent(blocks[index])


def test_an_onnx_model_from_a_folder_with_the_readmes_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Steps 1 and 2: the folder and the config, exactly as the README shows them.
    folder = tmp_path / "models" / "iris"
    weights = linear_model(folder / "1" / "model.onnx", inputs=4, outputs=3)
    (folder / "config.toml").write_text(readme_block("toml"))
    # Step 3: start the server on it.
    env = {
        "SLUICEWAY_MODEL_REPOSITORY": str(tmp_path / "models"),
        "SLUICEWAY_ADMIN_TOKEN": "change-me",
        "SLUICEWAY_MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    with live_server(env) as url:
        # Step 4: call it with the README's body.
        body = re.search(r"-d '(\{.*\})'", readme_block("sh", 1)).group(1)  # type: ignore[union-attr]
        response = httpx.post(
            f"{url}/v1/models/iris/infer",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200
        answer = response.json()
        assert answer["model"] == "iris" and answer["version"] == "1"
        expected = [5.1, 3.5, 1.4, 0.2] @ weights[:4] + weights[4]
        assert answer["outputs"]["y"][0] == pytest.approx(expected.tolist(), rel=1e-5)
        # Step 5: a second version, then the operator's commands.
        linear_model(folder / "2" / "model.onnx", seed=5)
        token = ["--url", url, "--token", "change-me"]
        assert main(["models", "load", "iris", *token]) == 0
        assert "iris version 2: READY" in capsys.readouterr().out
        assert main(["models", "unload", "iris", *token]) == 0
        assert "iris version 2: UNAVAILABLE" in capsys.readouterr().out
        assert main(["models", "list", "--url", url]) == 0
        listed = capsys.readouterr().out
        assert re.search(r"iris\s+2\s+UNAVAILABLE\s+onnx\s+\(unloaded\)", listed)
        assert re.search(r"imagenet\s+1\s+READY", listed)
        assert main(["models", "load", "iris", "--url", url]) == 1  # no token: refused
        assert "401" in capsys.readouterr().err
