"""The project's virtualenv for scripts/run and scripts/test: stdlib only, it runs before anything is installed."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
MIN_PYTHON = (3, 10)


def fail(message, code=1):
    print(f"\n{message}", file=sys.stderr)
    sys.exit(code)


def check_python():
    if sys.version_info < MIN_PYTHON:
        fail(f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed; this is {sys.version.split()[0]}.")


def venv_python():
    return VENV / "bin" / "python"


def in_venv():
    return Path(sys.prefix).resolve() == VENV.resolve()


def _requirement_files(path, seen=None):
    """The file and every file it pulls in with -r, so a change in any of them triggers a reinstall."""
    seen = [] if seen is None else seen
    path = path.resolve()
    if path in seen:
        return seen
    seen.append(path)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("-r", "--requirement"):
            _requirement_files(path.parent / parts[1], seen)
    return seen


def requirements_hash(path):
    digest = hashlib.sha256()
    for file in _requirement_files(path):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _stamp(path):
    return VENV / f".installed-{path.name}.sha256"


def _venv_works():
    if not venv_python().exists():
        return False
    probe = subprocess.run([str(venv_python()), "-c", "import pip"], capture_output=True)
    return probe.returncode == 0


def ensure_venv(requirements):
    """Create .venv when missing or broken; pip install `requirements` when it (or a file it includes) changed."""
    requirements = ROOT / requirements
    if not _venv_works():
        action = "Recreating the broken" if VENV.exists() else "Creating a"
        print(f"{action} virtualenv in {VENV} (Python {sys.version.split()[0]})...", flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)])
        if made.returncode != 0 or not _venv_works():
            fail("Could not create the virtualenv. On Debian/Ubuntu install the venv module first:\n"
                 "  sudo apt-get install python3-venv")
    wanted = requirements_hash(requirements)
    stamp = _stamp(requirements)
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return False
    print(f"Installing {requirements.name} into .venv (first run, or the requirements changed)...", flush=True)
    installed = subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(requirements)],
        cwd=ROOT,
    )
    if installed.returncode != 0:
        fail(f"pip install -r {requirements.name} failed (see above). Fix it and run this command again.")
    # Every file installed along the way (requirements.txt inside requirements-dev.txt) is now current too.
    for file in _requirement_files(requirements):
        _stamp(file).write_text(requirements_hash(file) + "\n")
    return True


def reexec_in_venv(script):
    """Continue this script with the virtualenv's Python (same pid, same arguments)."""
    if in_venv():
        return
    python = str(venv_python())
    os.execv(python, [python, str(script), *sys.argv[1:]])
