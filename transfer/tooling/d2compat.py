"""detectron2 installation quirks, in one place.

detectron2 has no buildable release on PyPI. Two ways it gets into our environment:

1. An official build (compiled against the local torch, e.g. on a GPU cluster): `import detectron2` works
   unchanged, `detectron2._C` is a real extension. `install` then does nothing.
2. Otherwise, the pure-Python part of the `sal-detectron2==0.7.2` wheel from PyPI (a packaged snapshot of
   detectron2 main; its only binary is a CPython-3.10 `_C` extension, which we leave out). `install`
   downloads the wheel with pip, checks its sha256, and unpacks the `detectron2/` package unchanged (minus
   `_C*.so`) into this interpreter's site-packages with a small `.dist-info` (so `pip uninstall
   sal-detectron2` removes it and `check` knows how it got there). Its runtime dependencies that are
   missing are installed with pip.

Without `_C`, every op we use still works; how such an install is imported (the placeholder for the C++ ops,
the numpy/PIL compatibility shims) is transfer.evaluation.detection.shim. `pkg_resources` is only used by
`detectron2.model_zoo`, which we never import (our configs are written out in eval_configs/detection).

    python -m transfer.tooling.d2compat install [--cache DIR] [--force]
    python -m transfer.tooling.d2compat check
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

from transfer.evaluation.detection.shim import applied_shims, has_real_extension, import_detectron2

WHEEL_DIST = "sal-detectron2"
WHEEL_VERSION = "0.7.2"
WHEEL_FILE = "sal_detectron2-0.7.2-cp310-none-any.whl"
WHEEL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
INSTALLER = "simsiam-suite/d2compat"
MARKER = "d2compat.json"  # inside the .dist-info we write

# detectron2's runtime dependencies (its METADATA, minus black (only for config pretty-printing, optional),
# minus numpy<2 (the pure-Python code runs on numpy 2 with the shim's aliases)).
RUNTIME_DEPS = [
    "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8", "tabulate",
    "cloudpickle", "tqdm>4.29.0", "tensorboard", "omegaconf>=2.1,<2.4", "hydra-core>=1.1", "packaging",
    "fvcore", "iopath",
]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".whl"


def install_info() -> dict | None:
    """The marker we wrote at install time, or None (not installed by us / official build)."""
    try:
        dist = importlib.metadata.distribution(WHEEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    text = dist.read_text(MARKER)
    return json.loads(text) if text else None


# ---------------------------------------------------------------------------------------------- install
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _detectron2_imports_unchanged() -> bool:
    """Does an unmodified `import detectron2` work in a fresh interpreter (and is it not ours)?"""
    code = "import detectron2, detectron2.config, detectron2.modeling"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return r.returncode == 0


def fetch_wheel(cache: Path) -> Path:
    """The verified wheel in `cache`, downloaded with pip when absent or corrupt."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / WHEEL_FILE
    if path.is_file() and _sha256(path) == WHEEL_SHA256:
        print(f"[d2compat] using cached {path}")
        return path
    if path.exists():
        print(f"[d2compat] cached {path} has the wrong sha256; downloading again")
        path.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
           "--implementation", "cp", "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64",
           "-d", str(cache), f"{WHEEL_DIST}=={WHEEL_VERSION}"]
    print("[d2compat] " + " ".join(cmd))
    r = subprocess.run(cmd)
    if r.returncode != 0 or not path.is_file():
        raise RuntimeError(f"pip download of {WHEEL_DIST}=={WHEEL_VERSION} failed (exit {r.returncode}); "
                           f"expected {path}. Is PyPI reachable?")
    got = _sha256(path)
    if got != WHEEL_SHA256:
        path.unlink()
        raise RuntimeError(f"{WHEEL_FILE}: sha256 {got} does not match the pinned {WHEEL_SHA256}; refusing to install")
    return path


def _record_line(root: Path, rel: str) -> str:
    data = (root / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def unpack_wheel(wheel: Path, site: Path) -> list[str]:
    """Unpack detectron2/ (without _C*.so) from the wheel into `site`; write our .dist-info. Returns skipped files."""
    target = site / "detectron2"
    if target.exists() and install_info() is None:
        raise RuntimeError(f"{target} exists but was not installed by transfer.tooling.d2compat and does not import; "
                           f"remove it (or fix that installation) and run again")
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(dir=site, prefix=".d2compat-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if not name.startswith("detectron2/") or name.endswith("/"):
                    continue
                base = name.rsplit("/", 1)[-1]
                if base.startswith("_C") and (base.endswith(".so") or base.endswith(".pyd")):
                    skipped.append(name)
                    continue
                zf.extract(name, tmp)
            meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            meta = zf.read(meta_name).decode()
            license_name = next((n for n in zf.namelist() if n.endswith(".dist-info/LICENSE")), None)
            license_text = zf.read(license_name).decode() if license_name else ""
        # remove a previous install of ours (files listed in its RECORD)
        for old in site.glob("sal_detectron2-*.dist-info"):
            shutil.rmtree(old)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / "detectron2", target)
    dist_info = site / f"sal_detectron2-{WHEEL_VERSION}.dist-info"
    dist_info.mkdir()
    # METADATA without Requires-Dist: the dependencies we need are installed separately (RUNTIME_DEPS).
    head = [ln for ln in meta.split("\n\n", 1)[0].splitlines()
            if not ln.startswith(("Requires-Dist:", "Provides-Extra:"))]
    (dist_info / "METADATA").write_text("\n".join(head) + "\n\n")
    (dist_info / "INSTALLER").write_text(INSTALLER + "\n")
    (dist_info / "top_level.txt").write_text("detectron2\n")
    if license_text:
        (dist_info / "LICENSE").write_text(license_text)
    marker = {"installer": INSTALLER, "wheel": WHEEL_FILE, "sha256": WHEEL_SHA256, "skipped": skipped,
              "python": sys.version.split()[0], "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (dist_info / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    rels = [p.relative_to(site).as_posix() for p in sorted(target.rglob("*")) if p.is_file()]
    rels += [p.relative_to(site).as_posix() for p in sorted(dist_info.iterdir())]
    lines = [_record_line(site, r) for r in rels] + [f"{dist_info.name}/RECORD,,"]
    (dist_info / "RECORD").write_text("\n".join(lines) + "\n")
    return skipped


def missing_deps() -> list[str]:
    from packaging.requirements import Requirement

    out = []
    for spec in RUNTIME_DEPS:
        req = Requirement(spec)
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(spec)
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(spec)
    return out


def install(cache: Path = DEFAULT_CACHE, force: bool = False) -> int:
    t0 = time.time()
    info = install_info()
    if info is None and not force and _detectron2_imports_unchanged():
        import detectron2

        print(f"[d2compat] detectron2 {detectron2.__version__} is already importable (official build at "
              f"{Path(detectron2.__file__).parent}); nothing to do")
        return 0
    site = Path(sysconfig.get_paths()["purelib"])
    if info is not None and info.get("sha256") == WHEEL_SHA256 and (site / "detectron2").is_dir() and not force:
        print(f"[d2compat] pure-Python detectron2 from {info['wheel']} already installed in {site}")
    else:
        wheel = fetch_wheel(Path(cache))
        skipped = unpack_wheel(wheel, site)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(site / "detectron2")], check=False)
        print(f"[d2compat] unpacked detectron2 {WHEEL_VERSION} into {site} (left out: {', '.join(skipped) or '-'})")
    need = missing_deps()
    if need:
        print("[d2compat] installing missing dependencies: " + " ".join(need))
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *need])
        if r.returncode != 0:
            print(f"[d2compat] pip install failed (exit {r.returncode})", file=sys.stderr)
            return r.returncode
    print(f"[d2compat] install done in {time.time() - t0:.1f}s")
    return 0


# ------------------------------------------------------------------------------------------------ check
def check() -> int:
    """Import detectron2, build a tiny R50-C4 Faster R-CNN, run one CPU forward; print versions."""
    import torch

    d2 = import_detectron2()
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    info = install_info()
    how = (f"pure-Python install from {info['wheel']} (sha256 {info['sha256'][:12]}..., no _C)" if info
           else "official build" if has_real_extension() else "unknown installation without _C")
    print(f"[d2compat] detectron2 {d2.__version__} at {Path(d2.__file__).parent}")
    print(f"[d2compat] installed as: {how}; compiled ops: {'yes' if has_real_extension() else 'no'}; "
          f"shims: {', '.join(applied_shims()) or 'none'}")
    print(f"[d2compat] python {sys.version.split()[0]}, torch {torch.__version__}")
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 50
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 10
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    model = build_model(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "height": 64, "width": 64}])
    assert "instances" in out[0], out
    print(f"[d2compat] R50-C4 Faster R-CNN built ({n / 1e6:.1f}M parameters) and ran one CPU forward: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transfer.tooling.d2compat", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("install", help="install detectron2 (pure-Python wheel) unless an official build imports")
    pi.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"wheel download folder (default {DEFAULT_CACHE})")
    pi.add_argument("--force", action="store_true", help="reinstall even if detectron2 already imports")
    sub.add_parser("check", help="import detectron2, build a tiny R50-C4 model, print version info")
    args = ap.parse_args(argv)
    try:
        return install(args.cache, args.force) if args.cmd == "install" else check()
    except Exception as e:  # noqa: BLE001 - a command-line tool: one clear line, non-zero exit
        print(f"[d2compat] {args.cmd} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
