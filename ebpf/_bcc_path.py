"""Make Debian's bcc importable from the project's virtualenv.

bcc's Python package ships only as the distribution package `python3-bpfcc`
(pure Python over `libbcc.so` through ctypes, stdlib imports only); the
PyPI name `bcc` is an unrelated project. A venv cannot see dist-packages,
and putting all of dist-packages on sys.path would drag in Debian's older
copies of other libraries. So, only when `import bcc` fails, this builds a
directory holding one symlink `bcc -> <dist-packages>/bcc` in a private
temporary directory and appends it to sys.path. Only the probe loader
imports this module.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
_LINK_DIR_PREFIX = "peerpull-bcc-"


def import_bcc(dist_packages: Path = DIST_PACKAGES) -> ModuleType:
    """Import bcc, first as installed, else through a one-package path entry.

    Raises ImportError when neither works.
    """
    try:
        return importlib.import_module("bcc")
    except ImportError:
        pass

    package = dist_packages / "bcc"
    if not (package / "__init__.py").is_file():
        raise ImportError(f"bcc is not installed at {package} (python3-bpfcc)")
    link_dir = Path(tempfile.mkdtemp(prefix=_LINK_DIR_PREFIX))
    atexit.register(shutil.rmtree, link_dir, ignore_errors=True)
    os.symlink(package, link_dir / "bcc")
    sys.path.append(str(link_dir))
    importlib.invalidate_caches()
    return importlib.import_module("bcc")
