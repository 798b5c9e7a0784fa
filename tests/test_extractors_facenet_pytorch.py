"""facenet-pytorch: real loading code that says why it cannot run where it cannot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from frip_plugins.extractors import facenet_pytorch as module
from frip_plugins.extractors.facenet_pytorch import (
    FaceNetPytorchExtractor,
    TorchvisionRequirement,
    matching_torchvision,
)

from frip_engine import plugins
from frip_engine.errors import PluginError, ProfileError
from frip_engine.plugins import Requirement


def test_frip_plugins_lists_it_as_unavailable_with_the_reason_and_the_fix() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "frip_engine", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    listed = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    entry = listed["facenet-pytorch"]
    assert entry["kind"] == "extractor" and entry["package"] == "frip-engine"
    if entry["available"]:  # a machine with a matching torch + torchvision
        pytest.skip("torch and a matching torchvision are installed here")
    assert "torchvision" in entry["install"] and "pip install" in entry["install"]
    assert "unavailable: needs" in entry["summary"] and "torchvision" in entry["summary"]
    human = subprocess.run(
        [sys.executable, "-m", "frip_engine", "plugins"],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "COLUMNS": "250"},
    )
    assert "facenet-pytorch" in human.stdout and "missing" in human.stdout


def test_creating_it_where_it_cannot_run_is_a_plugin_error_naming_the_fix() -> None:
    component = plugins.registry().get("extractor", "facenet-pytorch")
    if component.available:
        pytest.skip("torch and a matching torchvision are installed here")
    with pytest.raises(PluginError, match=r"needs .*torchvision.*pip install"):
        component.create()


def test_torchvision_must_be_built_for_the_installed_torch(monkeypatch: Any) -> None:
    assert matching_torchvision("2.13.0+cpu") == "0.28.0+cpu"
    assert matching_torchvision("2.9.1") == "0.24.1"
    versions = {"torch": "2.13.0+cpu", "torchvision": "0.28.0"}
    monkeypatch.setattr(module, "_version", lambda name: versions.get(name))
    monkeypatch.setattr(Requirement, "present", lambda self: True)
    requirement = TorchvisionRequirement("torchvision", "torchvision")
    assert not requirement.present()  # PyPI's CUDA build beside the CPU torch
    versions["torchvision"] = "0.28.0+cpu"
    assert requirement.present()
    versions["torch"] = "2.14.1+cpu"
    assert not requirement.present()
    needs = module.requirements()
    hint = next(r.install for r in needs if r.module == "torchvision")
    assert hint.startswith("torchvision==0.29.1+cpu --index-url")
    versions["torchvision"] = "0.28.0"
    monkeypatch.setattr(Requirement, "present", lambda self: self.module != "facenet_pytorch")
    reason = module.unavailable_reason(module.requirements())
    assert "torchvision 0.28.0 is not" in reason and "torchvision::nms" in reason


def test_parameters_are_checked_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="pretrained must be one of"):
        FaceNetPytorchExtractor(pretrained="ms1m")
    with pytest.raises(ProfileError, match="does not exist"):
        FaceNetPytorchExtractor(weights=str(tmp_path / "missing.pt"))
    weights = tmp_path / "20180402-114759-vggface2.pt"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(ProfileError, match="64 lowercase hex"):
        FaceNetPytorchExtractor(weights=str(weights), weights_sha256="abc")
    pinned = FaceNetPytorchExtractor(weights=str(weights), weights_sha256="a" * 64)
    local = next(m for m in pinned.models() if m.path == str(weights))
    assert local.sha256 == "a" * 64 and "MIT" in local.licence
    assert {m.name for m in pinned.models()} >= {"pnet.onnx", "rnet.onnx", "onet.onnx"}
    assert pinned.dimension == 512 and pinned.name == "facenet-pytorch"
