"""Building llama.cpp's `llama-server` on a rig: git clone at a ref, CMake with the backend the hardware calls
for, progress from CMake's `[ NN%]` lines, cancel by killing the whole process group. Plain Python, no Django.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .childenv import child_environment

DEFAULT_SOURCE = "https://github.com/ggml-org/llama.cpp"
# The release the panel offers by default (the llama.cpp tree the tests build is this commit).
DEFAULT_REF = "b6680"
# The source's own HEAD: for a local folder, the commit it has checked out (a branch's tip or a detached commit).
SOURCE_HEAD = "HEAD"
# Where the mirror keeps the source's HEAD it last fetched (a mirror's own HEAD is fixed when it is cloned).
_MIRRORED_HEAD = "refs/morpheus/source-head"

REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
URL_RE = re.compile(r"^(https://|ssh://|git@)[A-Za-z0-9.@:/_~+-]+$")
PROGRESS_RE = re.compile(r"^\[\s*(\d{1,3})%\]")
# "version: 0.5.0-dev (build 1, commit 1531400)" now; "version: 4589 (1d1e6a90)" in older releases.
VERSION_RE = re.compile(r"version:\s*(?P<version>\S+)\s*\((?:build\s*(?P<build>\d+),\s*commit\s*)?(?P<commit>[0-9a-f]+)\)")

# CMake options a provider may add, and the values each takes. Anything else is refused.
ALLOWED_OPTIONS = {
    "GGML_CUDA_F16": ("ON", "OFF"),
    "GGML_CUDA_FA_ALL_QUANTS": ("ON", "OFF"),
    "GGML_CUDA_FORCE_MMQ": ("ON", "OFF"),
    "GGML_CUDA_FORCE_CUBLAS": ("ON", "OFF"),
    "GGML_CUDA_GRAPHS": ("ON", "OFF"),
    "GGML_NATIVE": ("ON", "OFF"),
    "GGML_AVX2": ("ON", "OFF"),
    "GGML_AVX512": ("ON", "OFF"),
    "GGML_BLAS": ("ON", "OFF"),
    "GGML_OPENMP": ("ON", "OFF"),
    "LLAMA_CURL": ("ON", "OFF"),
}


class BuildError(Exception):
    """Shown to the provider as is."""


class BuildCancelled(BuildError):
    pass


def check_ref(ref):
    ref = (ref or "").strip()
    if not REF_RE.match(ref) or ".." in ref or ref.endswith((".", "/", ".lock")) or "//" in ref:
        raise BuildError(f"{ref!r} is not a valid git ref (a tag, branch or commit)")
    return ref


def check_source(source):
    """A git URL (https, ssh) or an absolute path to a git folder on the rig."""
    source = (source or "").strip()
    if source.startswith("/"):
        if ".." in Path(source).parts or not re.match(r"^/[A-Za-z0-9._/+-]*$", source):
            raise BuildError(f"{source!r} is not a plain absolute path")
        return source
    if not URL_RE.match(source) or ".." in source:
        raise BuildError(f"{source!r} is not a git URL (https://…, ssh://… or git@host:path) nor an absolute path")
    return source


def default_ref(source):
    """A local folder builds what it has checked out; a git URL, the tested release."""
    return SOURCE_HEAD if source.startswith("/") else DEFAULT_REF


def check_server_path(path):
    """The path of a llama-server binary to adopt, as far as it can be told without looking at the rig."""
    path = (path or "").strip()
    if not path.startswith("/") or any(c < " " for c in path) or ".." in Path(path).parts:
        raise BuildError(f"{path!r} is not a plain absolute path: give the full path of a llama-server binary "
                         "on the rig")
    name = path.rsplit("/", 1)[-1]
    if not name.startswith("llama-server"):
        raise BuildError(f"{path} is not a llama-server: its name is {name!r}, not llama-server…")
    return path


def check_options(options):
    """{"GGML_CUDA_F16": "ON"} → ["-DGGML_CUDA_F16=ON"], refusing anything off the allow-list."""
    flags = []
    for name, value in sorted((options or {}).items()):
        allowed = ALLOWED_OPTIONS.get(name)
        if allowed is None:
            raise BuildError(f"CMake option {name!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_OPTIONS))})")
        if str(value).upper() not in allowed:
            raise BuildError(f"{name} must be one of {', '.join(allowed)}")
        flags.append(f"-D{name}={str(value).upper()}")
    return flags


def cuda_architectures(gpus):
    """Compute capabilities "8.6" → "86"; only the rig's own, so the build compiles no more than it needs."""
    archs = set()
    for gpu in gpus or []:
        capability = (gpu.get("compute_capability") or "").strip()
        if re.match(r"^\d{1,2}\.\d$", capability):
            archs.add(capability.replace(".", ""))
    return ";".join(sorted(archs, key=int))


def backend_for(hardware):
    return "cuda" if (hardware or {}).get("gpus") else "cpu"


def configure_command(src, build_dir, backend, gpus, options=None, build_number=None, commit=None):
    args = [
        "cmake", "-S", str(src), "-B", str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",  # otherwise the build downloads the web UI
        "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary per build
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    ]
    if backend == "cuda":
        archs = cuda_architectures(gpus)
        if not archs:
            raise BuildError("CUDA build asked for, but no GPU compute capability is known for this rig")
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]
    if build_number is not None:
        args.append(f"-DLLAMA_BUILD_NUMBER={int(build_number)}")
    if commit:
        args.append(f"-DLLAMA_BUILD_COMMIT={commit}")
    user = check_options(options)
    if "-DGGML_NATIVE=ON" in user:
        args.remove("-DGGML_NATIVE=OFF")
    return args + user


def build_command(build_dir, jobs):
    return ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(int(jobs))]


def server_version(binary, timeout=20):
    """What `llama-server --version` says, checking that the binary runs at all."""
    if os.path.isfile(binary) and not os.access(binary, os.X_OK):
        raise BuildError(f"{binary} is not executable")
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=timeout,
                              env=child_environment())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{binary} does not run: {exc}") from None
    text = (proc.stdout + proc.stderr).strip()
    match = VERSION_RE.search(text)
    if proc.returncode != 0 or not match:
        raise BuildError(f"{binary} --version failed (exit {proc.returncode}): {text[-300:]}")
    build_number = match["build"] or (match["version"] if match["version"].isdigit() else None)
    return {"version": f"{match['version']} (build {build_number}, {match['commit']})" if match["build"]
            else f"{match['version']} ({match['commit']})",
            "build_number": int(build_number) if build_number else None, "commit": match["commit"],
            "version_text": text[-500:]}


@dataclass
class BuildRequest:
    build_id: int
    source: str = DEFAULT_SOURCE
    ref: str = DEFAULT_REF
    backend: str = "auto"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.source = check_source(self.source)
        self.ref = check_ref(self.ref)
        if self.backend not in ("auto", "cpu", "cuda"):
            raise BuildError(f"backend {self.backend!r} is not auto, cpu or cuda")
        check_options(self.options)


class Builder:
    """Runs one build at a time per rig (a compile already uses every core)."""

    def __init__(self, builds_dir, ccache_dir=None, jobs=None):
        self.builds_dir = Path(builds_dir)
        self.mirrors_dir = self.builds_dir / "mirrors"
        self.ccache_dir = Path(ccache_dir) if ccache_dir else self.builds_dir / "ccache"
        self.jobs = jobs or os.cpu_count() or 2
        self.lock = threading.Lock()
        self._procs = {}
        self._cancelled = set()

    def cancel(self, build_id):
        self._cancelled.add(int(build_id))
        proc = self._procs.get(int(build_id))
        if proc is not None and proc.poll() is None:
            _kill_group(proc)

    def build(self, request, hardware, progress=None):
        """Returns {binary, version, commit, backend, seconds, ...}; raises BuildError with git's/CMake's words."""
        started = time.monotonic()
        with self.lock:
            if request.build_id in self._cancelled:
                raise BuildCancelled("cancelled before it started")
            backend = backend_for(hardware) if request.backend == "auto" else request.backend
            gpus = (hardware or {}).get("gpus") or []
            workdir = self.builds_dir / str(int(request.build_id))
            if workdir.exists():
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True)
            log = _Log(progress)
            src = workdir / "src"
            self._checkout(request, src, log)
            commit = self._git(["git", "-C", str(src), "rev-parse", "--short=9", "HEAD"], log).strip()
            count = self._git(["git", "-C", str(src), "rev-list", "--count", "HEAD"], log).strip()
            build_dir = workdir / "build"
            env = self._env(workdir)
            log.stage("configure", f"backend {backend}")
            self._run(request.build_id,
                      configure_command(src, build_dir, backend, gpus, request.options,
                                        build_number=int(count) if count.isdigit() else None, commit=commit),
                      env, log, "cmake configure")
            log.stage("compile", f"{self.jobs} jobs")
            self._run(request.build_id, build_command(build_dir, self.jobs), env, log, "cmake build")
            binary = build_dir / "bin" / "llama-server"
            if not binary.exists():
                raise BuildError("the build finished but bin/llama-server is missing")
            final = workdir / "llama-server"
            shutil.copy2(binary, final)
            version = server_version(final)
            shutil.rmtree(build_dir, ignore_errors=True)  # the objects live on in ccache; keep the disk free
            return {
                "binary": str(final),
                "backend": backend,
                "cuda_architectures": cuda_architectures(gpus) if backend == "cuda" else "",
                "commit": commit,
                "ref": request.ref,
                "source": request.source,
                **version,
                "seconds": round(time.monotonic() - started, 1),
                "log": log.tail(),
            }

    def _env(self, workdir):
        env = child_environment()
        env["CCACHE_DIR"] = str(self.ccache_dir)
        # Paths differ per build folder; relative to it, ccache finds the same objects again (a rebuild in seconds).
        env["CCACHE_BASEDIR"] = str(workdir)
        env["CCACHE_NOHASHDIR"] = "1"
        env.setdefault("CCACHE_MAXSIZE", "5G")
        return env

    def _checkout(self, request, src, log):
        """Clone through a local mirror of the source, so a second build fetches only what is new."""
        mirror = self.mirrors_dir / (hashlib.sha256(request.source.encode()).hexdigest()[:16] + ".git")
        mirror.parent.mkdir(parents=True, exist_ok=True)
        if mirror.exists():
            log.stage("fetch", request.source)
            self._git(["git", "-C", str(mirror), "fetch", "--prune", "--tags", "origin",
                       "+refs/heads/*:refs/heads/*"], log)
        else:
            log.stage("clone", request.source)
            self._git(["git", "clone", "--mirror", "--", request.source, str(mirror)], log)
        ref = request.ref
        if ref == SOURCE_HEAD:
            # The mirror's own HEAD stays where it was at clone time: ask the source for its HEAD now.
            self._git(["git", "-C", str(mirror), "fetch", "--quiet", "origin", f"+HEAD:{_MIRRORED_HEAD}"], log)
            ref = self._git(["git", "-C", str(mirror), "rev-parse", "--verify", f"{_MIRRORED_HEAD}^{{commit}}"],
                            log).strip()
        self._git(["git", "clone", "--quiet", "--no-checkout", "--", str(mirror), str(src)], log)
        log.stage("checkout", request.ref if ref == request.ref else f"{request.ref} ({ref[:12]})")
        self._git(["git", "-C", str(src), "checkout", "--quiet", "--detach", ref, "--"], log)

    def _git(self, args, log):
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=1800,
                                  env=child_environment({"GIT_TERMINAL_PROMPT": "0"}))
        except subprocess.TimeoutExpired:
            raise BuildError(f"{' '.join(args[:3])} timed out") from None
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip()
            log.line(message)
            raise BuildError(f"{args[0]} {args[1] if args[1] != '-C' else args[3]} failed: {message[-500:]}")
        return proc.stdout

    def _run(self, build_id, args, env, log, what):
        if build_id in self._cancelled:
            raise BuildCancelled("cancelled")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True, bufsize=1)
        self._procs[build_id] = proc
        try:
            for line in proc.stdout:
                log.line(line.rstrip())
            proc.wait()
        finally:
            self._procs.pop(build_id, None)
        if build_id in self._cancelled:
            raise BuildCancelled("cancelled by the provider; the build was stopped")
        if proc.returncode != 0:
            raise BuildError(f"{what} failed (exit {proc.returncode}): " + " | ".join(log.tail_lines(8)))


def _kill_group(proc, grace=5.0):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Log:
    """The last lines of output and the CMake percentage, handed to the callback at most once a second."""

    def __init__(self, callback, keep=60, every=1.0):
        self.lines = deque(maxlen=keep)
        self.callback = callback
        self.every = every
        self.percent = 0
        self.stage_name = "starting"
        self._last = 0.0

    def stage(self, name, detail=""):
        self.stage_name = name
        self.line(f"== {name} {detail}".rstrip())
        self._emit(force=True)

    def line(self, text):
        for part in text.splitlines() or [""]:
            self.lines.append(part[:400])
            match = PROGRESS_RE.match(part)
            if match:
                self.percent = min(100, int(match[1]))
        self._emit()

    def tail_lines(self, n):
        return list(self.lines)[-n:]

    def tail(self):
        return "\n".join(self.lines)

    def _emit(self, force=False):
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last < self.every):
            return
        self._last = now
        self.callback({"stage": self.stage_name, "percent": self.percent, "log": self.tail()})
