"""Every result type has the same `to_json()`: `Result`, JSON-ready data, what `--json` prints."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from tagtune.cli.common import print_json
from tagtune.core.results import Result, json_ready

SRC = Path(__file__).resolve().parents[2] / "src" / "tagtune"


def test_every_result_class_is_a_result():
    """A class named `...Result` or `...Summary` in the library subclasses `Result`."""
    found, missing = [], []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Result", "Summary")):
                if node.name == "Result" and path.name == "results.py":
                    continue
                found.append(node.name)
                if "Result" not in {getattr(b, "id", None) for b in node.bases}:
                    missing.append(f"{path.relative_to(SRC)}: {node.name}")
    assert len(found) >= 15 and "TrainSummary" in found and "TopResult" in found
    assert missing == []


@dataclass(frozen=True)
class _Inner(Result):
    path: Path
    size: tuple[int, int]


@dataclass(frozen=True)
class _Outer(Result):
    name: str
    inner: _Inner
    files: list[Path]
    by_path: dict[str, _Inner]


@dataclass(frozen=True)
class _Custom(Result):
    count: int

    def to_json(self) -> dict:
        return {"count": self.count, "twice": 2 * self.count}


def test_to_json_is_json_ready_data():
    inner = _Inner(Path("/x/a.png"), (64, 32))
    outer = _Outer("run", inner, [Path("b")], {"a": inner})
    data = outer.to_json()
    assert data == {
        "name": "run",
        "inner": {"path": "/x/a.png", "size": [64, 32]},
        "files": ["b"],
        "by_path": {"a": {"path": "/x/a.png", "size": [64, 32]}},
    }
    assert json.loads(json.dumps(data)) == data
    assert json_ready([_Custom(2)]) == [{"count": 2, "twice": 4}]


def test_json_flag_prints_the_results_to_json(capsys):
    print_json(_Custom(3))
    print_json({"result": _Inner(Path("p"), (1, 2))})
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"count": 3, "twice": 6},
        {"result": {"path": "p", "size": [1, 2]}},
    ]
