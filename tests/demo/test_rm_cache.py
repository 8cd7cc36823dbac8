"""The demo's cached reward model is named by its settings and its data's content, not paths."""
import shutil

from rlhfkit.demo.settings import DemoConfig, resolve
from rlhfkit.demo.stages import reward_model_key, reward_model_settings


def settings_reading(tmp_path, folder):
    """The demo's RM settings with both data files copied into ``folder``."""
    settings = reward_model_settings(resolve(DemoConfig()))
    data = dict(settings["data"])
    (tmp_path / folder).mkdir()
    for name in ("train_path", "eval_path"):
        copy = tmp_path / folder / f"{name}.jsonl.gz"
        shutil.copyfile(data[name], copy)
        data[name] = str(copy)
    return {**settings, "data": data}


def test_the_same_data_at_another_path_finds_the_same_model(tmp_path):
    here, there = settings_reading(tmp_path, "checkout-a"), settings_reading(tmp_path, "b")
    assert here["data"]["train_path"] != there["data"]["train_path"]
    assert reward_model_key(here) == reward_model_key(there)


def test_other_data_or_other_settings_name_another_model(tmp_path):
    settings = settings_reading(tmp_path, "a")
    key = reward_model_key(settings)
    with open(settings["data"]["eval_path"], "ab") as f:
        f.write(b"\n")  # one byte more: other data
    assert reward_model_key(settings) != key
    shorter = {**settings, "data": {**settings["data"], "max_length": 32}}
    assert reward_model_key(shorter) != reward_model_key(settings)
