"""llama.cpp for the tests, without GitHub: the source tree vendored in the llama-cpp-python sdist on PyPI,
made into a git folder (the real `git clone` path), and a CPU `llama-server` built from it once.

Both are cached under ~/.cache/morpheus (CI on the same machine reuses them); on a cold machine they are
made again: about 75 MB from PyPI and a 4-minute build on 2 cores, then seconds with the ccache folder.
"""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST_VERSION = "0.3.36"
TAG = "b0c1e57"  # what the tests build: llama.cpp 0c1e57098 as vendored in that sdist
CACHE = Path(os.environ.get("MORPHEUS_TEST_CACHE", Path.home() / ".cache" / "morpheus"))
CCACHE_DIR = CACHE / "ccache"


def _run(args, **kwargs):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def sdist():
    folder = CACHE / "sdist"
    found = sorted(folder.glob(f"llama_cpp_python-{SDIST_VERSION}.tar.gz"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
          f"llama-cpp-python=={SDIST_VERSION}", "-d", str(folder)])
    return sorted(folder.glob(f"llama_cpp_python-{SDIST_VERSION}.tar.gz"))[0]


def source_repo():
    """A git folder holding llama.cpp, tagged TAG — what a provider's `git clone` would give."""
    repo = CACHE / f"llama.cpp-{SDIST_VERSION}"
    if (repo / ".git").is_dir() and subprocess.run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", TAG],
                                                   capture_output=True).returncode == 0:
        return repo
    tmp = CACHE / f"llama.cpp-{SDIST_VERSION}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist()) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix) and m.name != prefix]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(tmp, members=members, filter="data")
    git_file = tmp / ".git"
    if git_file.is_file():  # a submodule pointer left by the sdist's build
        git_file.unlink()
    env = {**os.environ, "GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
           "GIT_COMMITTER_NAME": "tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}
    _run(["git", "init", "-q", str(tmp)])
    _run(["git", "-C", str(tmp), "add", "-A"])
    _run(["git", "-C", str(tmp), "commit", "-q", "-m", f"llama.cpp from llama-cpp-python {SDIST_VERSION}"], env=env)
    _run(["git", "-C", str(tmp), "tag", TAG])
    shutil.rmtree(repo, ignore_errors=True)
    tmp.rename(repo)
    return repo


def server_binary():
    """A CPU llama-server built from source_repo() through the agent's own builder (cached)."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "llama-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once build it once
        return _server_binary()


def _server_binary():
    from nodes.agent import builder

    cached = CACHE / f"llama-server-{TAG}-cpu"
    if cached.exists():
        try:
            builder.server_version(cached)
            return cached
        except builder.BuildError:
            cached.unlink()
    work = CACHE / f"test-builds-{os.getpid()}"
    build = builder.Builder(work, ccache_dir=CCACHE_DIR)
    result = build.build(builder.BuildRequest(build_id=1, source=str(source_repo()), ref=TAG, backend="cpu"), {})
    shutil.copy2(result["binary"], cached.with_suffix(".tmp"))
    os.replace(cached.with_suffix(".tmp"), cached)
    shutil.rmtree(work, ignore_errors=True)
    return cached


def fit_params_binary():
    """llama.cpp's `llama-fit-params` from the same source and flags as server_binary() (cached; ccache makes the
    shared objects free once the server is built), for comparing the panel's fit planner with llama.cpp's own."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "llama-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fit_params_binary()


def _fit_params_binary():
    from nodes.agent import builder

    cached = CACHE / f"llama-fit-params-{TAG}-cpu"
    if cached.exists():
        return cached
    work = CACHE / f"test-builds-{os.getpid()}"
    build = builder.Builder(work, ccache_dir=CCACHE_DIR)
    request = builder.BuildRequest(build_id=1, source=str(source_repo()), ref=TAG, backend="cpu")
    workdir = work / "1"  # the layout Builder.build uses, so ccache (CCACHE_BASEDIR) finds the server's objects
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log = builder._Log(None)
    src, build_dir = workdir / "src", workdir / "build"
    build._checkout(request, src, log)
    commit = build._git(["git", "-C", str(src), "rev-parse", "--short=9", "HEAD"], log).strip()
    count = build._git(["git", "-C", str(src), "rev-list", "--count", "HEAD"], log).strip()
    env = build._env(workdir)
    build._run(1, builder.configure_command(src, build_dir, "cpu", [], build_number=int(count), commit=commit),
               env, log, "cmake configure")
    build._run(1, ["cmake", "--build", str(build_dir), "--target", "llama-fit-params", "-j", str(build.jobs)],
               env, log, "cmake build")
    binary = build_dir / "bin" / "llama-fit-params"
    if not binary.exists():
        raise RuntimeError("llama-fit-params did not build:\n" + log.tail())
    shutil.copy2(binary, cached.with_suffix(".tmp"))
    os.replace(cached.with_suffix(".tmp"), cached)
    shutil.rmtree(work, ignore_errors=True)
    return cached


def slow_server(path, seconds, binary=None):
    """A llama-server that takes `seconds` longer to start (a big model loading): a script that waits, then execs the
    real one (`--version` answers at once, so it can be adopted)."""
    binary = binary or server_binary()
    path = Path(path)
    path.write_text(f'#!/bin/sh\ncase " $* " in *" --version "*) exec {binary} "$@" ;; esac\n'
                    f'sleep {seconds}\nexec {binary} "$@"\n')
    path.chmod(0o755)
    return path


def tiny_server_form(name, rig_file, build, port, **changes):
    """The host form's fields for a small CPU server of the tiny test model (tests/gguf_model.py)."""
    return {"name": name, "model_file": rig_file.pk, "build": build.pk, "host": "127.0.0.1", "port": port,
            "ctx_size": 256, "n_gpu_layers": 0, "parallel": 1, "flash_attn": "off", "cache_type_k": "f16",
            "cache_type_v": "f16", "extra_flags_text": "--no-webui", **changes}


def host_tiny_model(client, node, binary, folder, **form):
    """A real llama-server of the tiny test model on rig `node`, set up the way a provider does it in the panel (the
    binary adopted as a build, the model file on the rig, a deployment of it saved and launched), once it is healthy:
    (deployment, port). `client` is an operator's; `form` changes the host form's fields."""
    from hosting.models import Build, Deployment
    from models_catalog.models import RigFile
    from tests.gguf_model import write_tiny_llama
    from tests.harness import wait_until
    from tests.helpers import free_port

    client.post(f"/rigs/{node.name}/builds/adopt/", {"adopt-path": str(binary)})
    build = Build.objects.get(node=node)
    wait_until(lambda: Build.objects.get(pk=build.pk).status == Build.READY, timeout=60, message="build adopted")
    model = write_tiny_llama(Path(folder) / "tiny-llama-F32.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    port = free_port()
    response = client.post(f"/rigs/{node.name}/deployments/new/", tiny_server_form("tiny", rig_file, build, port,
                                                                                    **form))
    assert response.status_code == 302, response.content.decode()[-2000:]
    deployment = Deployment.objects.get(node=node, name="tiny")
    wait_until(lambda: Deployment.objects.get(pk=deployment.pk).actual_state == "healthy", timeout=60,
               message="llama-server healthy")
    return deployment, port
