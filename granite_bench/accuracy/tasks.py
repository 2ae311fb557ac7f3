"""Which lm-eval tasks to run, loaded so they work offline and from any working directory.

- Local tasks: `suites/eval/<task>/<task>.yaml` in lm-eval's own format, data beside it, read by the folder's
  `utils.py` through lm-eval's `custom_dataset: !function` (resolved against the YAML's folder, not the working
  directory). They load here, and under lm-eval's own CLI (`--include_path suites/eval`), the same way: through
  a TaskManager over the folder.
- Standard lm-eval names (arc_easy, hellaswag, lambada_openai, wikitext, ...) are looked up only when asked for,
  in the one folder of lm-eval's task tree that defines them (the full index costs ~15 s per process). When a
  dataset cannot be reached, one line says so and names the offline alternative.
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..resources import suite_path

EVAL_DIR = suite_path("eval")
DEFAULT_TASKS = ["canary_recall", "canary_lists", "canary_text", "canary_copy"]

# offline alternative per lm-eval output type
OFFLINE_ALTERNATIVE = {
    "multiple_choice": "canary_recall",
    "loglikelihood": "canary_recall",
    "loglikelihood_rolling": "canary_text",
    "generate_until": "canary_copy",
}


class TaskError(ValueError):
    """A task name that is neither local nor known to lm-eval."""


@dataclass
class TaskSelection:
    """What `load_tasks` could load: lm-eval Task objects, and one note per task it had to skip."""

    tasks: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [t.config.task for t in self.tasks]


class TaskYamlLoader(yaml.SafeLoader):
    """Safe YAML that reads lm-eval's `!function module.name` tags as plain strings (nothing is imported)."""


TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def read_task_yaml(path: Path) -> dict:
    data = yaml.load(Path(path).read_text(), Loader=TaskYamlLoader)  # noqa: S506 - a SafeLoader subclass
    return data if isinstance(data, dict) else {}


def local_task_files(eval_dir: Path = EVAL_DIR) -> dict[str, Path]:
    """{task name: yaml path} for every task YAML under eval_dir (one folder per task)."""
    found = {}
    for path in sorted(Path(eval_dir).glob("*/*.yaml")):
        name = read_task_yaml(path).get("task")
        if isinstance(name, str):
            found[name] = path
    return found


def lm_eval_task_dir() -> Path:
    """lm-eval's task tree, found without importing lm-eval (its import pulls in torch and datasets)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("lm-eval is not installed: pip install lm-eval")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def unknown_task_line(name: str, local: dict) -> str:
    return f"unknown task '{name}': use one of {', '.join(sorted(local))} or an lm-eval task name"


def check_task_names(names: list[str], eval_dir: Path = EVAL_DIR) -> None:
    """TaskError for the first name that is neither a local task nor defined in lm-eval's task tree (a text scan,
    nothing imported): asked before torch loads."""
    local = local_task_files(eval_dir)
    for name in names:
        if name not in local and standard_task_folder(name) is None:
            raise TaskError(unknown_task_line(name, local))


def standard_task_folder(name: str) -> Path | None:
    """The folder of lm-eval's task tree whose YAML defines `task: <name>` (a text scan, no index)."""
    pattern = re.compile(rf"^task:\s*['\"]?{re.escape(name)}['\"]?\s*$", re.MULTILINE)
    for path in lm_eval_task_dir().rglob("*.yaml"):
        try:
            if pattern.search(path.read_text(errors="ignore")):
                return path.parent
        except OSError:
            continue
    return None


def unreachable_line(name: str, task_folder: Path | None, err: Exception) -> str:
    output_type, dataset = "", "its dataset"
    if task_folder is not None:
        for path in task_folder.glob("*.yaml"):
            text = path.read_text(errors="ignore")
            if re.search(rf"^task:\s*{re.escape(name)}\s*$", text, re.MULTILINE):
                found = re.search(r"^output_type:\s*(\S+)", text, re.MULTILINE)
                output_type = found.group(1) if found else ""
                found = re.search(r"^dataset_path:\s*(\S+)", text, re.MULTILINE)
                dataset = f"dataset {found.group(1)}" if found else dataset
    alternative = OFFLINE_ALTERNATIVE.get(output_type, "canary_recall")
    reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    return (f"{name}: {dataset} cannot be reached ({reason}); "
            f"offline alternative: {alternative}")


def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (one TCP connect)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline_unless_reachable():
    """Without a route to the hub, load datasets in offline mode: from the local cache if there, else fail at once
    (instead of five retries of eight seconds each)."""
    if hub_reachable():
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    with contextlib.ExitStack() as stack:
        for module in (datasets.config, huggingface_hub.constants):
            old = module.HF_HUB_OFFLINE
            module.HF_HUB_OFFLINE = True
            stack.callback(setattr, module, "HF_HUB_OFFLINE", old)
        yield


def task_manager(include_path: list[Path] | None = None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in include_path or []] or None, include_defaults=False)


def load_tasks(names: list[str], eval_dir: Path = EVAL_DIR) -> TaskSelection:
    """Fresh lm-eval Task objects for `names` (load again for each model: tasks keep their requests)."""
    local = local_task_files(eval_dir)
    selection = TaskSelection()
    for name in names:
        if name in local:
            loaded = task_manager([local[name].parent]).load([name])
            selection.tasks += list(loaded["tasks"].values())
            continue
        folder = standard_task_folder(name)
        if folder is None:
            raise TaskError(unknown_task_line(name, local))
        try:
            with hub_offline_unless_reachable():
                loaded = task_manager([folder]).load([name])
        except Exception as err:  # noqa: BLE001 - any dataset failure becomes one line
            selection.skipped.append(unreachable_line(name, folder, err))
            continue
        selection.tasks += list(loaded["tasks"].values())
    return selection
