"""meta.json: the final meta-parameters by name, and every `let` of meta-parameters alone after its transform.

A scalar is a number. A vector is `{"names": [...], "values": [...]}`, one name per value: the PT data's
task names when the vector has one value per PT task (`task_names`), else its indices `"0"`, `"1"`, ....
Anything else (a matrix-valued `let`) is a nested list. A weighting network's weights are left out (they
are in checkpoint.pt). Needs torch alone: `mptc compile --emit python` copies it into the standalone
script, whose meta.json is then the same file.

    >>> import torch
    >>> meta_json({"s": torch.tensor(0.5), "w": torch.tensor([1.0, 2.0]), "v": torch.tensor([3.0])}, ["a", "b"])
    {'s': 0.5, 'w': {'names': ['a', 'b'], 'values': [1.0, 2.0]}, 'v': {'names': ['0'], 'values': [3.0]}}
"""
from __future__ import annotations



def task_names(info: dict, count: int) -> list[str]:
    """The names of the PT data's `count` tasks: its `info["task_names"]` (your own data: a table's target
    columns, `labels[0]`, ... of an array), else its `info["classes"]`, else `task 0`, `task 1`, ....

        >>> task_names({"task_names": ["a", "b"]}, 2), task_names({}, 2), task_names({"classes": [0, 1, 2]}, 2)
        (['a', 'b'], ['task 0', 'task 1'], ['task 0', 'task 1'])
    """
    for key in ("task_names", "classes"):
        names = info.get(key)
        if isinstance(names, (list, tuple)) and len(names) == count:
            return [str(n) for n in names]
    return [f"task {i}" for i in range(count)]


def meta_json(values: dict, tasks: list[str], labels: dict | None = None) -> dict:
    """meta.json's content (module docstring) from the meta-parameters' final values (tensors by name) and
    the PT data's task names; `labels` names the values of some vectors outright (a factored meta's
    objectives and stage choices)."""
    out, labels = {}, labels or {}
    for name, value in values.items():
        value = value.detach().cpu()
        if value.dim() == 0:
            out[name] = value.item()
        elif value.dim() == 1:
            names = labels.get(name) or (tasks if len(tasks) == value.numel() else [str(i) for i in range(value.numel())])
            out[name] = {"names": list(names), "values": value.tolist()}
        else:
            out[name] = value.tolist()
    return out


def vectors(meta: dict) -> dict:
    """`{name: (names, values)}` of the vectors of a meta.json's content; a plain list (a run of an older
    mptc) is named by its indices.

        >>> vectors({"s": 0.5, "w": {"names": ["a"], "values": [1.0]}, "old": [2.0, 3.0]})
        {'w': (['a'], [1.0]), 'old': (['0', '1'], [2.0, 3.0])}
    """
    out = {}
    for name, entry in meta.items():
        if isinstance(entry, dict) and isinstance(entry.get("values"), list):
            out[name] = (list(entry.get("names") or map(str, range(len(entry["values"])))), entry["values"])
        elif isinstance(entry, list) and all(isinstance(v, (int, float)) for v in entry):
            out[name] = ([str(i) for i in range(len(entry))], entry)
    return out
