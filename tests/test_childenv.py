"""The environment the agent's builds and servers get: what a compile or a GPU needs, none of the agent's secrets."""

import pytest

from nodes.agent.childenv import allowed, child_environment


@pytest.mark.parametrize("name", ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "CC", "CXXFLAGS", "LDFLAGS",
                                  "CCACHE_MAXSIZE", "CUDA_HOME", "CUDA_VISIBLE_DEVICES", "CUDACXX", "LD_LIBRARY_PATH",
                                  "NVIDIA_VISIBLE_DEVICES", "CMAKE_PREFIX_PATH", "GIT_SSL_CAINFO", "https_proxy",
                                  "NO_PROXY"])
def test_it_passes_what_a_build_or_a_gpu_needs(name):
    assert allowed(name)


@pytest.mark.parametrize("name", ["MORPHEUS_NODE_TOKEN", "MORPHEUS_BROKER_URL", "MORPHEUS_NODE", "HF_TOKEN",
                                  "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "DB_PASSWORD",
                                  "GIT_ASKPASS_TOKEN", "CMAKE_SIGNING_KEY", "REDIS_URL", "DJANGO_SECRET_KEY",
                                  "PYTHONPATH", "LD_PRELOAD", "LLAMA_ARG_HOST", "LLAMA_API_KEY", "SSH_AUTH_SOCK"])
def test_it_keeps_out_the_agents_credentials_and_anything_not_on_the_list(name):
    assert not allowed(name)


def test_it_adds_what_the_caller_sets_itself(monkeypatch):
    monkeypatch.setenv("MORPHEUS_NODE_TOKEN", "node-token")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = child_environment({"GIT_TERMINAL_PROMPT": "0"})
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["LC_ALL"] == "C.UTF-8"
    assert "MORPHEUS_NODE_TOKEN" not in env
