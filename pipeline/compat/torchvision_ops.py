"""Let a CUDA build of torchvision import next to a CPU build of torch.

Only CUDA wheels of torchvision are reachable on our machines. Next to CPU torch their C++ ops fail
to load, and ``torchvision._meta_registrations`` then raises ``operator torchvision::nms does not
exist`` at import time. transformers imports torchvision whenever it is installed, so every
transformers model, peft, torchmetrics and segment-anything would fail with it.

No library offers a fix, hence this small hook: a ``sys.meta_path`` finder that, the first time
``torchvision`` is imported and only when the two builds disagree, defines the ``torchvision::nms``
and ``torchvision::qnms`` schemas, ``nms`` with a pure-torch CPU kernel. The rest of torchvision's Python API then works. The setup
(``make venv``) installs it through ``smartedit_torchvision_compat.pth`` in the venv.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

_LIBRARY = None  # keeps the torch.library.Library alive for the life of the process


def _torchvision_is_cuda_build() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        text = version_file.read_text()
    except OSError:
        return False
    return re.search(r"__version__ = '[^']*\+cu\d+'", text) is not None


def nms_reference(dets, scores, iou_threshold: float):
    """Greedy non-maximum suppression, as torchvision's kernel: (N, 4) xyxy boxes, (N,) scores → kept indices."""
    import torch

    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def define_missing_ops() -> bool:
    """Define ``torchvision::nms`` when torch is a CPU build and torchvision a CUDA build. Returns True if defined."""
    global _LIBRARY
    if _LIBRARY is not None or not _torchvision_is_cuda_build():
        return False
    import torch

    if torch.version.cuda is not None:
        return False
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    # torchvision registers fake kernels for exactly these two at import; qnms (quantized) gets no kernel.
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", nms_reference, "CPU")
    return True


class _TorchvisionFinder:
    """Runs :func:`define_missing_ops` just before torchvision is first imported, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        define_missing_ops()
        return None  # the normal finders import torchvision itself


def install() -> None:
    """Install the import hook (idempotent); cheap: nothing heavy is imported until torchvision is."""
    if "torchvision" in sys.modules:
        define_missing_ops()
        return
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())


PTH_NAME = "zz_smartedit_torchvision_compat.pth"  # 'zz': after the editable-install .pth that puts us on sys.path


def write_pth() -> Path:
    """Install the hook for every interpreter of this environment (called by ``make venv``)."""
    import sysconfig

    target = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text("import pipeline.compat.torchvision_ops as _m; _m.install()\n")
    return target

