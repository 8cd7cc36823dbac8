"""docs/python_api.md's snippets and examples/python_api.ipynb run as written.

Both run in a scratch folder that holds the repository's data/ and examples/ (links), so
their runs/ land there, not in the checkout.
"""
import re

import pytest

SNIPPET = re.compile(r"```python\n(.*?)```", re.S)


@pytest.fixture
def scratch(repo_root, tmp_path, monkeypatch):
    for name in ("data", "examples"):
        (tmp_path / name).symlink_to(repo_root / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_api_doc_snippets_run_in_order(repo_root, scratch, capsys):
    snippets = SNIPPET.findall((repo_root / "docs/python_api.md").read_text())
    assert len(snippets) == 5
    namespace: dict = {}
    for number, code in enumerate(snippets, start=1):
        exec(compile(code, f"docs/python_api.md snippet {number}", "exec"), namespace)
    sft, dpo, ppo, grpo = (namespace[k] for k in ("sft", "dpo", "ppo", "grpo"))
    assert sft.final_dir == scratch / "runs/api_sft/final"
    assert sft.history[-1]["loss"] < sft.history[1]["loss"]
    assert [row["step"] for row in dpo.history] == [0, 1, 2, 3]
    assert (scratch / "runs/api_ppo/final/README.md").exists()
    assert grpo.output_dir.name == "grpo_tiny" and "score_mean" in ppo.metrics
    printed = capsys.readouterr().out
    assert "unknown key 'train.max_stepz'" in printed and "train_dataset:1: " in printed


def test_notebook_runs(repo_root, scratch):
    import nbclient  # the test extra (pyproject.toml): nbclient, nbformat, ipykernel
    import nbformat

    notebook = nbformat.read(repo_root / "examples/python_api.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells)  # stored without outputs
    # A local kernel (ipykernel): nothing leaves the machine. A failing cell raises here.
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(scratch)}}).execute()
    text = "".join(output.get("text", "") for cell in notebook.cells
                   for output in cell.get("outputs", []))
    assert "ConfigError: unknown key 'rollout.temperture'" in text
    assert "score_mean" in text and (scratch / "runs/notebook_ppo/final/README.md").exists()
