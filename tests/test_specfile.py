"""Job spec files as `omega submit`, `plan`, `update` and `omega up --submit` read them:
a key given twice is refused, naming it, in YAML and JSON alike (TOML refuses it itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omega.specfile import SpecFileError, load_spec

YAML = """\
name: web
scheduler: batch
resources: {cpu: 100m, memory: 32Mi, cpu: 2}
command: ["true"]
"""
JSON = '{"name": "a", "scheduler": "batch", "name": "b", "resources": {"cpu": 1, "memory": "1Gi"}, "command": ["true"]}'
TOML = 'name = "a"\nname = "b"\n'


@pytest.mark.parametrize(
    ("suffix", "text", "said"),
    [
        (".yaml", YAML, "is not valid YAML: line 3: key 'cpu' is given twice"),
        (".json", JSON, "is not valid JSON: key 'name' is given twice in one object"),
        (".toml", TOML, "is not valid TOML"),
    ],
)
def test_a_key_given_twice_is_refused_not_overwritten(tmp_path: Path, suffix, text, said):
    path = tmp_path / f"job{suffix}"
    path.write_text(text)
    with pytest.raises(SpecFileError) as refused:
        load_spec(path)
    assert str(refused.value).startswith(f"{path}: {said}"), refused.value


def test_the_examples_still_load():
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        assert load_spec(path).name, path
