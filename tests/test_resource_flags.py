"""Declaring disk and devices on the command line: `omega up --resource` and
`python -m agents --resource` refuse what is not a resource, before starting
anything, with the flag, the value and what is allowed, and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agents.__main__ import config_from_args

AGENT = ["--name", "a", "--work-dir", "/tmp/x", "--addr", "http://127.0.0.1:1", "--token", "t"]
AGENT += ["--insecure"]


@pytest.mark.parametrize(
    "value,words",
    [
        ("gpu=two", "gpu 'two' is not a count"),
        ("GPU=1", "'GPU' is not a resource"),
        ("disk=lots", "disk 'lots' is not a quantity"),
        ("gpu", "is not NAME=AMOUNT"),
        ("cpu=2", "use --cpu for cpu"),
    ],
)
def test_agent_refuses_a_bad_resource_declaration(value, words, capsys):
    with pytest.raises(SystemExit) as exited:
        config_from_args([*AGENT, "--resource", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--resource" in err and words in err, err


def test_agent_declares_disk_and_devices():
    config = config_from_args([*AGENT, "--resource", "gpu=2", "--resource", "disk=10Gi"])
    assert config.resources == {"gpu": 2, "disk": 10 << 30}


@pytest.mark.parametrize(
    "value,words", [("fpga=x", "fpga 'x' is not a count"), ("memory=1Gi", "cpu and memory")]
)
def test_omega_up_refuses_a_bad_resource_before_starting(tmp_path, value, words):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omega",
            "up",
            "--data-dir",
            str(tmp_path / "d"),
            "--resource",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert words in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()  # nothing was started or written
