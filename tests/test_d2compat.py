"""transfer.tooling.d2compat (the installer and its check) and the import shim it uses
(transfer.evaluation.detection.shim): detectron2 imports here, the placeholder for its C++ ops fails clearly, the
shims are in place, and the pure-Python install is what the marker says (unpacked from the pinned wheel without _C)."""
from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer.evaluation.detection import shim
from transfer.tooling import d2compat


def test_import_and_shims():
    d2 = shim.import_detectron2()
    assert d2 is sys.modules["detectron2"] and shim.import_detectron2() is d2
    assert np.float is float and np.int is int and np.str is str  # removed numpy aliases, only added if missing
    from PIL import Image

    assert Image.LINEAR == Image.Resampling.BILINEAR


@pytest.mark.skipif(shim.has_real_extension(), reason="an official detectron2 build has the real ops")
def test_missing_ops_fail_with_a_clear_message():
    import detectron2

    placeholder = sys.modules["detectron2._C"]
    assert detectron2._C is placeholder
    with pytest.raises(shim.D2OpUnavailable, match=r"C\+\+ op 'nms_rotated' is not available in this "
                                                        r"pure-Python install.*official detectron2 build"):
        placeholder.nms_rotated
    assert not hasattr(placeholder, "COCOevalAccumulate")  # probing code sees "not there"


@pytest.mark.skipif(shim.has_real_extension(), reason="an official detectron2 build has the real ops")
def test_fast_coco_eval_names_the_missing_op(coco_tiny_root):
    """detectron2's C++ COCO evaluation fails with our message (hence COCOEvaluator(use_fast_impl=False))."""
    import contextlib
    import io

    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_tiny_root / "annotations" / "instances_val2017.json"))
        ann = gt.dataset["annotations"][0]
        dt = gt.loadRes([{"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                          "score": 0.9}])
        ev = COCOeval_opt(gt, dt, "bbox")
        ev.params.imgIds = [ann["image_id"]]
        with pytest.raises(shim.D2OpUnavailable, match="C\\+\\+ op 'InstanceAnnotation' is not available"):
            ev.evaluate()


def test_ops_we_use_work_without_the_extension():
    from detectron2.layers import ROIAlign, batched_nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.int64), 0.5)
    assert keep.tolist() == [0, 2]
    out = ROIAlign((2, 2), 1.0, 0, aligned=True)(torch.ones(1, 1, 8, 8), torch.tensor([[0, 0, 0, 4, 4.0]]))
    assert torch.allclose(out, torch.ones(1, 1, 2, 2))


def test_install_marker_and_dependencies():
    info = d2compat.install_info()
    if info is None:
        pytest.skip("detectron2 was not installed by transfer.tooling.d2compat (official build)")
    assert info["sha256"] == d2compat.WHEEL_SHA256 and info["wheel"] == d2compat.WHEEL_FILE
    assert any(s.endswith(".so") and "/_C" in s for s in info["skipped"])
    import detectron2

    pkg = Path(detectron2.__file__).parent
    assert not list(pkg.glob("_C*.so"))
    assert d2compat.missing_deps() == []


def test_unpack_wheel_leaves_out_only_the_extension(tmp_path):
    wheel = d2compat.DEFAULT_CACHE / d2compat.WHEEL_FILE
    if not wheel.is_file():
        pytest.skip(f"no cached wheel at {wheel}")
    assert d2compat._sha256(wheel) == d2compat.WHEEL_SHA256
    site = tmp_path / "site"
    site.mkdir()
    skipped = d2compat.unpack_wheel(wheel, site)
    assert skipped == ["detectron2/_C.cpython-310-x86_64-linux-gnu.so"]
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.startswith("detectron2/") and not n.endswith("/")]
        sample = "detectron2/modeling/roi_heads/roi_heads.py"
        assert (site / sample).read_bytes() == zf.read(sample)  # unchanged
    assert sorted(p.relative_to(site).as_posix() for p in (site / "detectron2").rglob("*") if p.is_file()) == \
        sorted(set(members) - set(skipped))
    dist = site / f"sal_detectron2-{d2compat.WHEEL_VERSION}.dist-info"
    record = (dist / "RECORD").read_text().splitlines()
    assert len(record) == len(members) - 1 + len(list(dist.iterdir()))
    line = next(r for r in record if r.startswith(sample + ","))
    import base64

    digest = base64.urlsafe_b64encode(hashlib.sha256((site / sample).read_bytes()).digest()).rstrip(b"=").decode()
    assert line == f"{sample},sha256={digest},{(site / sample).stat().st_size}"
    assert "Requires-Dist" not in (dist / "METADATA").read_text()


def test_check_command(capsys):
    d2 = shim.import_detectron2()
    assert d2compat.main(["check"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[d2compat] ")]
    # the version and place of the detectron2 that is actually imported (official build or our wheel)
    assert lines[0] == f"[d2compat] detectron2 {d2.__version__} at {Path(d2.__file__).parent}"
    info = d2compat.install_info()
    if info is not None:  # our pure-Python install: the pinned wheel's version
        assert d2.__version__ == d2compat.WHEEL_VERSION
        assert lines[1].startswith(f"[d2compat] installed as: pure-Python install from {info['wheel']} ")
    elif shim.has_real_extension():
        assert lines[1].startswith("[d2compat] installed as: official build;")
    ops = "yes" if shim.has_real_extension() else "no"
    assert f"; compiled ops: {ops};" in lines[1]
    assert lines[2] == f"[d2compat] python {sys.version.split()[0]}, torch {torch.__version__}"
    assert lines[3].startswith("[d2compat] R50-C4 Faster R-CNN built (") and lines[3].endswith("one CPU forward: OK")


def test_importing_the_shim_changes_nothing():
    """The shim acts when import_detectron2() is called (test_import_and_shims), not when it or the installer is
    imported."""
    import subprocess

    code = ("import sys, numpy, transfer.tooling.d2compat, transfer.evaluation.detection.shim; "
            "assert 'detectron2' not in sys.modules and 'torch' not in sys.modules and 'float' not in vars(numpy)")
    subprocess.run([sys.executable, "-c", code], check=True)
