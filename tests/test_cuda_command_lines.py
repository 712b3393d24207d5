"""The CUDA build and launch command lines for the seed's 2x RTX 3090 rig, from the fake NVML layer."""

import importlib.util
import sys

import pytest

from nodes.agent import builder, serverspec
from nodes.agent.probe import probe_hardware
from tests.harness import FAKES


@pytest.fixture
def two_3090s(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("pynvml", FAKES / "pynvml.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("FAKE_NVML", "2x3090")
    return probe_hardware(tmp_path)


def test_it_builds_for_cuda_with_only_the_rigs_compute_capability(two_3090s, tmp_path):
    assert builder.backend_for(two_3090s) == "cuda"
    args = builder.configure_command(tmp_path / "src", tmp_path / "build", "cuda", two_3090s["gpus"],
                                     build_number=6680, commit="0c1e57098")
    assert args == [
        "cmake", "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build"),
        "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86",
        "-DLLAMA_BUILD_NUMBER=6680", "-DLLAMA_BUILD_COMMIT=0c1e57098",
    ]
    assert builder.build_command(tmp_path / "build", 8) == [
        "cmake", "--build", str(tmp_path / "build"), "--target", "llama-server", "-j", "8"]


def test_it_lists_each_architecture_once_for_mixed_cards():
    gpus = [{"compute_capability": "8.6"}, {"compute_capability": "8.9"}, {"compute_capability": "8.6"},
            {"compute_capability": "9.0"}]
    assert builder.cuda_architectures(gpus) == "86;89;90"


def test_it_refuses_a_cuda_build_without_known_gpus(tmp_path):
    with pytest.raises(builder.BuildError, match="no GPU compute capability"):
        builder.configure_command(tmp_path, tmp_path / "b", "cuda", [])


def test_it_launches_the_seeds_dual_gpu_command_line():
    preset = serverspec.PRESETS["seed-dual-gpu"]
    spec = serverspec.ServerSpec(
        deployment_id=7, binary="/var/lib/morpheus-agent/builds/3/llama-server",
        model_path="/var/lib/morpheus-agent/models/NousResearch__Hermes-3-Llama-3.1-8B-GGUF/Hermes-3-Llama-3.1-8B.Q8_0.gguf",
        port=8080, host="0.0.0.0", ctx_size=preset["ctx_size"], n_gpu_layers=preset["n_gpu_layers"],
        parallel=preset["parallel"], tensor_split=preset["tensor_split"], flash_attn=preset["flash_attn"],
        alias="hermes-3-8b", api_key="sk-seed-key-0123")  # 0.0.0.0 is refused without one
    assert serverspec.launch_args(spec) == [
        "/var/lib/morpheus-agent/builds/3/llama-server",
        "--model", "/var/lib/morpheus-agent/models/NousResearch__Hermes-3-Llama-3.1-8B-GGUF/Hermes-3-Llama-3.1-8B.Q8_0.gguf",
        "--host", "0.0.0.0", "--port", "8080", "--ctx-size", "8192", "--n-gpu-layers", "99", "--parallel", "22",
        "--flash-attn", "auto", "--metrics", "--tensor-split", "1,1", "--alias", "hermes-3-8b",
    ]


def test_it_keeps_the_api_key_out_of_the_command_line():
    spec = serverspec.ServerSpec(deployment_id=1, binary="/b/llama-server", model_path="/m/x.gguf", port=8081,
                                 api_key="sk-very-secret-1")
    args = serverspec.launch_args(spec, api_key_file="/state/servers/1/api-key")
    assert "sk-very-secret-1" not in " ".join(args)
    assert args[-2:] == ["--api-key-file", "/state/servers/1/api-key"]
