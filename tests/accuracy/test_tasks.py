"""Offline eval tasks: found by name, loadable from any working directory, standard names handled."""


import pytest

from granite_bench.accuracy import tasks
from granite_bench.accuracy.tasks import (DEFAULT_TASKS, TaskError, load_tasks, local_task_files, read_task_yaml,
                                          unreachable_line)


def test_every_default_task_reads_its_data_beside_its_yaml_not_from_the_working_directory():
    found = local_task_files()
    for name in DEFAULT_TASKS:
        config = read_task_yaml(found[name])
        assert config["custom_dataset"] == "utils.load_beside"  # lm-eval resolves !function from the YAML's folder
        assert "data_files" not in (config.get("dataset_kwargs") or {})
        assert (found[name].parent / "utils.py").exists() and (found[name].parent / f"{name}.jsonl").exists()


def test_canary_tasks_load_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    selection = load_tasks(DEFAULT_TASKS)
    assert selection.skipped == []
    assert sorted(selection.names) == sorted(DEFAULT_TASKS)
    types = {t.config.task: t.config.output_type for t in selection.tasks}
    assert types == {"canary_recall": "multiple_choice", "canary_lists": "multiple_choice",
                     "canary_text": "loglikelihood_rolling", "canary_copy": "generate_until"}
    for task in selection.tasks:
        assert len(task.test_docs()) >= 100


def test_recall_documents_have_ten_choices_taken_from_the_prompt():
    (task,) = load_tasks(["canary_recall"]).tasks
    for doc in list(task.test_docs())[:20]:
        assert len(doc["choices"]) == 10
        assert all(f" {choice}," in doc["prompt"] or f" {choice} |" in doc["prompt"] for choice in doc["choices"])


def test_unknown_task_names_the_local_tasks():
    with pytest.raises(TaskError, match="canary_recall"):
        load_tasks(["no_such_task_anywhere"])


def test_standard_task_is_found_in_its_own_folder_of_lm_evals_tree():
    folder = tasks.standard_task_folder("arc_easy")
    assert folder is not None and folder.name == "arc"


def test_unreachable_standard_task_gives_one_line_with_the_offline_alternative():
    line = unreachable_line("arc_easy", tasks.standard_task_folder("arc_easy"), ConnectionError("no network"))
    assert "\n" not in line
    assert line.startswith("arc_easy:") and "allenai/ai2_arc" in line and "canary_recall" in line
    rolling = unreachable_line("wikitext", tasks.standard_task_folder("wikitext"), OSError("offline"))
    assert rolling.endswith("canary_text")


def test_unreachable_dataset_is_skipped_not_raised(monkeypatch, tmp_path):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(tasks, "hub_reachable", lambda: False)  # as on a machine without network
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")  # and an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    selection = load_tasks(["canary_recall", "arc_easy"])
    assert selection.names == ["canary_recall"]
    assert len(selection.skipped) == 1 and "canary_recall" in selection.skipped[0]
