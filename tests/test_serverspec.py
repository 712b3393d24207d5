"""Launch parameters for llama-server: what is refused before anything runs, and the command line they make."""

import pytest

from nodes.agent.serverspec import PRESETS, ServerSpec, SpecError, launch_args

BINARY = "/var/lib/morpheus-agent/builds/3/llama-server"
MODEL = "/var/lib/morpheus-agent/models/org__Tiny-GGUF/tiny-Q8_0.gguf"


def spec(**changes):
    return ServerSpec(**{"deployment_id": 1, "binary": BINARY, "model_path": MODEL, "port": 8080, **changes})


@pytest.mark.parametrize("changes, error", [
    ({"ctx_size": 0}, "ctx-size must be between 256 and 1048576 (got 0)"),
    ({"ctx_size": 10_000_000}, "ctx-size must be between 256 and 1048576 (got 10000000)"),
    ({"ctx_size": "8192"}, "ctx-size must be a whole number"),
    ({"ctx_size": 512, "parallel": 8}, "ctx-size 512 split over 8 slots leaves under 128 tokens each"),
    ({"parallel": 0}, "parallel must be between 1 and 256"),
    ({"n_gpu_layers": -1}, "n-gpu-layers must be between 0 and 999"),
    ({"threads": 0}, "threads must be between 1 and 1024"),
    ({"port": 80}, "port must be between 1024 and 65535 (got 80)"),
    ({"port": 70000}, "port must be between 1024 and 65535 (got 70000)"),
    ({"port": True}, "port must be a whole number"),
    ({"host": "localhost"}, "host 'localhost' must be an IP address"),
    ({"host": "127.0.0.1; reboot"}, "must be an IP address"),
    ({"host": "fe80::1%$(reboot)"}, "without a %scope"),
    ({"tensor_split": "1,1;ls"}, "tensor-split must look like 1,1"),
    ({"tensor_split": "one,two"}, "tensor-split must look like 1,1"),
    ({"tensor_split": "1,1\n"}, "tensor-split must look like 1,1"),
    ({"flash_attn": "yes"}, "flash-attn must be one of auto, on, off"),
    ({"cache_type_k": "q3_k"}, "cache-type-k must be one of"),
    ({"cache_type_v": "f16 --rpc"}, "cache-type-v must be one of"),
    ({"alias": "x$(reboot)"}, "alias may hold letters, digits and . _ : / -"),
    ({"alias": "tiny\n--rpc"}, "alias may hold"),
    ({"alias": "tiny\n"}, "alias may hold"),
    ({"alias": "-tiny"}, "alias may hold"),
    ({"api_key": "short"}, "API key must be 8-128 characters"),
    ({"api_key": "has a space in it"}, "API key must be 8-128 characters"),
    ({"api_key": "sk-secret-key\n"}, "API key must be 8-128 characters"),
    ({"model_path": "models/tiny.gguf"}, "model_path must be an absolute path on the rig"),
    ({"model_path": "/models/../etc/passwd.gguf"}, "model_path must be an absolute path on the rig"),
    ({"model_path": "/models/tiny.bin"}, "the model must be a .gguf file"),
    ({"binary": "llama-server"}, "binary must be an absolute path on the rig"),
    ({"deployment_id": 0}, "deployment id must be a positive number"),
    ({"desired": "paused"}, "desired state must be running or stopped"),
])
def test_it_refuses_bad_launch_parameters_with_a_clear_message(changes, error):
    with pytest.raises(SpecError) as refused:
        spec(**changes)
    assert error in str(refused.value)


@pytest.mark.parametrize("flags, error", [
    (["--rpc=1.2.3.4:50052"], "flag '--rpc' is not allowed (allowed: --batch-size,"),
    (["--model=/etc/shadow"], "flag '--model' is not allowed"),
    (["--mlock; rm -rf /"], "flag '--mlock; rm -rf /' is not allowed"),
    (["--mlock && reboot"], "is not allowed"),
    (["--batch-size=512;ls"], "--batch-size needs a value like --batch-size=512"),
    (["--batch-size=$(reboot)"], "--batch-size needs a value like --batch-size=512"),
    (["--split-mode=row|tee"], "--split-mode needs a value like --split-mode=value"),
    (["--mlock=1"], "--mlock takes no value"),
    (["--batch-size"], "--batch-size needs a value"),
    (["--batch-size="], "--batch-size needs a value"),
    ([42], "each extra flag must be text"),
    ("--mlock", "extra flags must be a list"),
    (["--mlock"] * 21, "at most 20 flags"),
])
def test_it_refuses_extra_flags_off_the_allow_list_or_with_bad_values(flags, error):
    with pytest.raises(SpecError) as refused:
        spec(extra_flags=flags)
    assert error in str(refused.value)


def test_it_normalises_the_host_it_accepts():
    assert spec(host="0.0.0.0", api_key="sk-0123456789").host == "0.0.0.0"
    assert spec(host="::1").host == "::1"
    assert spec(host="0:0:0:0:0:0:0:1").host == "::1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "fd00::1"])
def test_it_refuses_to_serve_other_machines_without_an_api_key(host):
    with pytest.raises(SpecError) as refused:
        spec(host=host)
    assert str(refused.value) == (f"host {spec(host=host, api_key='sk-0123456789').host} lets other machines reach "
                                  "the server: set an API key, or use 127.0.0.1 to keep it on the rig")
    with pytest.raises(SpecError, match="set an API key"):  # the rig refuses it too, whatever the panel sent
        ServerSpec.from_dict({**spec().to_dict(), "host": host})
    assert spec(host=host, api_key="sk-0123456789").api_key == "sk-0123456789"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_it_serves_loopback_without_an_api_key(host):
    assert "--api-key-file" not in launch_args(spec(host=host), api_key_file="/state/servers/1/api-key")


def test_it_still_accepts_stopping_a_keyless_server_saved_with_an_open_host():
    assert spec(host="0.0.0.0", desired="stopped").desired == "stopped"


def test_it_refuses_a_setting_it_does_not_know_from_the_panels_message():
    data = spec().to_dict()
    assert ServerSpec.from_dict(data) == spec()
    with pytest.raises(SpecError, match=r"unknown setting\(s\): command, shell"):
        ServerSpec.from_dict({**data, "shell": True, "command": "rm -rf /"})


def test_it_refuses_a_bad_value_arriving_in_the_panels_message():
    with pytest.raises(SpecError, match="port must be between"):
        ServerSpec.from_dict({**spec().to_dict(), "port": 22})


def test_it_makes_the_plain_command_line_for_default_settings():
    assert launch_args(spec()) == [
        BINARY, "--model", MODEL, "--host", "127.0.0.1", "--port", "8080", "--ctx-size", "8192",
        "--n-gpu-layers", "99", "--parallel", "1", "--flash-attn", "auto", "--metrics",
    ]


def test_it_adds_every_optional_setting_as_separate_arguments():
    args = launch_args(spec(host="0.0.0.0", port=9000, ctx_size=16384, n_gpu_layers=0, parallel=4, threads=8,
                            tensor_split="3,2", flash_attn="on", cache_type_k="q8_0", cache_type_v="q4_0",
                            alias="org/tiny:q8", api_key="sk-0123456789",
                            extra_flags=["--mlock", " --batch-size=512 ", "--split-mode=row"]),
                       api_key_file="/state/servers/1/api-key")
    assert args == [
        BINARY, "--model", MODEL, "--host", "0.0.0.0", "--port", "9000", "--ctx-size", "16384",
        "--n-gpu-layers", "0", "--parallel", "4", "--flash-attn", "on", "--metrics",
        "--threads", "8", "--tensor-split", "3,2", "--cache-type-k", "q8_0", "--cache-type-v", "q4_0",
        "--alias", "org/tiny:q8", "--api-key-file", "/state/servers/1/api-key",
        "--mlock", "--batch-size", "512", "--split-mode", "row",
    ]
    assert "sk-0123456789" not in args


def test_it_leaves_the_key_file_out_when_there_is_no_key():
    assert "--api-key-file" not in launch_args(spec(), api_key_file="/state/servers/1/api-key")


@pytest.mark.parametrize("name, parallel, tensor_split", [("seed-single-gpu", 4, ""), ("seed-dual-gpu", 22, "1,1")])
def test_it_ships_the_seeds_command_lines_as_valid_presets(name, parallel, tensor_split):
    preset = PRESETS[name]
    settings = {key: value for key, value in preset.items() if key != "label"}
    assert (settings["ctx_size"], settings["n_gpu_layers"], settings["parallel"], settings["tensor_split"]) == (
        8192, 99, parallel, tensor_split)
    args = launch_args(spec(**settings))
    assert args[args.index("--parallel") + 1] == str(parallel)
    assert ("--tensor-split" in args) == bool(tensor_split)
