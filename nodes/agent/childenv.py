"""The environment the agent hands to the programs it starts (git, CMake, compilers, llama-server).

An allow-list, not a deny-list: the agent's own credentials (MORPHEUS_NODE_TOKEN, the broker URL with its
password, HF_TOKEN, any *_KEY) must never reach a build script or a server, and a new secret added to the agent's
environment tomorrow must not leak either.
"""

import os

# Exact names a build or a server may need.
ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "CUDACXX", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "MAKEFLAGS",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy", "ALL_PROXY",
})
# Name prefixes, per family: locale, ccache, CUDA (CUDA_HOME, CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER...), nvcc,
# NVIDIA container runtime, ggml's runtime switches, CMake, git. Not LLAMA_ARG_*: those would change the launch.
ALLOWED_PREFIXES = ("LC_", "CCACHE_", "CUDA_", "NVCC_", "NVIDIA_", "GGML_", "CMAKE_", "GIT_")
# Whatever its family, a name that says it holds a secret stays out (GIT_ASKPASS_TOKEN, CMAKE_..._PASSWORD).
SECRET_MARKERS = ("TOKEN", "KEY", "PASSWORD", "PASSWD", "SECRET", "CREDENTIAL")


def allowed(name):
    if any(marker in name.upper() for marker in SECRET_MARKERS):
        return False
    return name in ALLOWED or name.startswith(ALLOWED_PREFIXES)


def child_environment(extra=None):
    """os.environ reduced to the allow-list, plus `extra` (what the caller sets itself, taken as is)."""
    env = {name: value for name, value in os.environ.items() if allowed(name)}
    env.update(extra or {})
    return env
