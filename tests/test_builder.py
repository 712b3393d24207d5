"""The rig-side llama.cpp builder: input checks, the CMake command line, progress, git checkout, cancel, version.

The real build through CMake is in tests/test_integration_hosting.py; here the git part runs against a tiny local
repository and the long-running step is a stand-in process, so each test takes well under a second or two.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodes.agent import builder
from nodes.agent.builder import BuildCancelled, BuildError, BuildRequest, Builder, _Log
from tests import llama
from tests.harness import wait_until

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
           "GIT_COMMITTER_NAME": "tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}


# --- input checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["b6680", "master", "release/1.2", "0c1e57098", "v1.0-rc1"])
def test_it_accepts_tags_branches_and_commits(ref):
    assert builder.check_ref(f"  {ref} ") == ref


@pytest.mark.parametrize("ref", ["", "../../etc", "b1..b2", "-b1", "--upload-pack=evil", "b1; rm -rf /", "b1 b2",
                                 "$(reboot)", "main/", "main.lock", "a//b", "x" * 101, "b1`id`"])
def test_it_refuses_refs_that_are_not_plain_git_names(ref):
    with pytest.raises(BuildError, match="is not a valid git ref"):
        builder.check_ref(ref)


@pytest.mark.parametrize("source", ["https://github.com/ggml-org/llama.cpp", "ssh://git@example.com/llama.cpp.git",
                                    "git@github.com:ggml-org/llama.cpp.git", "/home/me/src/llama.cpp"])
def test_it_accepts_git_urls_and_absolute_folders(source):
    assert builder.check_source(source) == source


@pytest.mark.parametrize("source, error", [
    ("https://x.example/a; rm -rf /", "is not a git URL"),
    ("https://x.example/$(reboot)", "is not a git URL"),
    ("https://x.example/a/../b", "is not a git URL"),
    ("ext::sh -c touch% /tmp/pwned", "is not a git URL"),
    ("file:///etc", "is not a git URL"),
    ("relative/folder", "is not a git URL"),
    ("/home/me/../../etc", "is not a plain absolute path"),
    ("/home/me/llama.cpp;reboot", "is not a plain absolute path"),
    ("/home/me/llama cpp", "is not a plain absolute path"),
])
def test_it_refuses_sources_with_shell_metacharacters_or_parent_folders(source, error):
    with pytest.raises(BuildError, match=error):
        builder.check_source(source)


def test_it_turns_allowed_cmake_options_into_flags():
    assert builder.check_options({"GGML_CUDA_F16": "on", "LLAMA_CURL": "OFF"}) == [
        "-DGGML_CUDA_F16=ON", "-DLLAMA_CURL=OFF"]
    assert builder.check_options(None) == []


@pytest.mark.parametrize("options, error", [
    ({"CMAKE_C_COMPILER": "/tmp/evil"}, "CMake option 'CMAKE_C_COMPILER' is not allowed (allowed: GGML_AVX2,"),
    ({"CMAKE_CUDA_ARCHITECTURES": "86"}, "is not allowed"),
    ({"GGML_CUDA_F16": "ON;rm -rf /"}, "GGML_CUDA_F16 must be one of ON, OFF"),
    ({"GGML_NATIVE": ""}, "GGML_NATIVE must be one of ON, OFF"),
    ({"GGML_NATIVE": "maybe"}, "GGML_NATIVE must be one of ON, OFF"),
])
def test_it_refuses_cmake_options_off_the_allow_list_or_with_bad_values(options, error):
    with pytest.raises(BuildError) as refused:
        builder.check_options(options)
    assert error in str(refused.value)


def test_it_checks_a_whole_build_request_before_anything_runs():
    with pytest.raises(BuildError, match="backend 'rocm' is not auto, cpu or cuda"):
        BuildRequest(build_id=1, backend="rocm")
    with pytest.raises(BuildError, match="not allowed"):
        BuildRequest(build_id=1, options={"CMAKE_INSTALL_PREFIX": "/"})
    request = BuildRequest(build_id=1, source=" /src/llama.cpp ", ref=" b1 ")
    assert (request.source, request.ref) == ("/src/llama.cpp", "b1")


# --- backend and command lines -----------------------------------------------------------------------
def test_it_picks_cuda_only_when_the_rig_has_nvidia_gpus():
    assert builder.backend_for({"gpus": [{"compute_capability": "8.6"}]}) == "cuda"
    assert builder.backend_for({"gpus": []}) == "cpu"
    assert builder.backend_for(None) == "cpu"


def test_it_builds_only_for_the_rigs_own_compute_capabilities():
    assert builder.cuda_architectures([{"compute_capability": "8.9"}, {"compute_capability": "12.0"},
                                       {"compute_capability": "7.5"}]) == "75;89;120"
    # Junk from a driver (or an old report without it) is skipped, not passed to CMake.
    assert builder.cuda_architectures([{"compute_capability": "8.6; rm"}, {}, {"compute_capability": None}]) == ""


def test_it_configures_a_cpu_build_without_downloads_or_machine_specific_code(tmp_path):
    args = builder.configure_command(tmp_path / "src", tmp_path / "build", "cpu", [], build_number=1, commit="abc1234")
    assert args == [
        "cmake", "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build"),
        "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_NUMBER=1", "-DLLAMA_BUILD_COMMIT=abc1234",
    ]


def test_it_lets_the_provider_turn_native_code_on_instead_of_off(tmp_path):
    args = builder.configure_command(tmp_path, tmp_path / "b", "cpu", [], {"GGML_NATIVE": "on", "GGML_AVX2": "OFF"})
    assert "-DGGML_NATIVE=OFF" not in args
    assert args[-2:] == ["-DGGML_AVX2=OFF", "-DGGML_NATIVE=ON"]
    assert not any("GGML_CUDA" in arg for arg in args)


def test_it_refuses_a_bad_user_option_in_the_configure_step(tmp_path):
    with pytest.raises(BuildError, match="not allowed"):
        builder.configure_command(tmp_path, tmp_path / "b", "cpu", [], {"CMAKE_CXX_FLAGS": "-O0"})


# --- progress and the log tail ------------------------------------------------------------------------
def test_it_reads_cmakes_percentages_and_keeps_the_last_lines():
    reports = []
    log = _Log(reports.append, keep=3, every=0)
    log.stage("compile", "2 jobs")
    for line in ["-- Configuring done", "[  4%] Building C object ggml/src/ggml.c.o",
                 "warning: something [ 99%] in the middle", "[ 45%] Building CXX object tools/server/server.cpp.o",
                 "[100%] Built target llama-server"]:
        log.line(line)
    assert log.percent == 100
    assert log.tail_lines(3) == ["warning: something [ 99%] in the middle",
                                 "[ 45%] Building CXX object tools/server/server.cpp.o",
                                 "[100%] Built target llama-server"]
    assert reports[0] == {"stage": "compile", "percent": 0, "log": "== compile 2 jobs"}
    assert [r["percent"] for r in reports[1:]] == [0, 0, 4, 4, 45, 100]
    assert reports[-1]["log"].endswith("[100%] Built target llama-server")


def test_it_ignores_percentages_that_are_not_at_the_start_of_a_line():
    log = _Log(None, every=0)
    log.line("note: see [ 87%] above")
    assert log.percent == 0


def test_it_reports_progress_at_most_once_a_second_except_for_stage_changes():
    reports = []
    log = _Log(reports.append, every=60)
    log.stage("compile")
    before = len(reports)
    for i in range(1, 51):
        log.line(f"[{i:3d}%] Building object {i}")
    assert len(reports) == before  # the line flood is throttled
    log.stage("done")
    assert len(reports) == before + 1 and reports[-1]["percent"] == 50 and reports[-1]["stage"] == "done"


def test_it_cuts_very_long_lines_and_splits_multi_line_output():
    log = _Log(None, every=0)
    log.line("x" * 5000)
    log.line("first\nsecond")
    assert [len(line) for line in log.tail_lines(3)] == [400, 5, 6]


# --- the version a binary reports ---------------------------------------------------------------------
def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    path.chmod(0o755)
    return path


def test_it_reads_the_version_a_current_llama_server_prints(tmp_path):
    fake = script(tmp_path, "llama-server",
                  "print('version: 0.5.0-dev (build 6680, commit 0c1e57098)', file=sys.stderr)\n"
                  "print('built with cc for x86_64-linux-gnu', file=sys.stderr)")
    version = builder.server_version(fake)
    assert (version["version"], version["build_number"], version["commit"]) == (
        "0.5.0-dev (build 6680, 0c1e57098)", 6680, "0c1e57098")
    assert "built with cc" in version["version_text"]


def test_it_reads_the_version_an_older_llama_server_prints(tmp_path):
    fake = script(tmp_path, "llama-server", "print('version: 4589 (1d1e6a90)')")
    version = builder.server_version(fake)
    assert (version["version"], version["build_number"], version["commit"]) == ("4589 (1d1e6a90)", 4589, "1d1e6a90")


@pytest.mark.parametrize("body, error", [
    ("print('Segmentation fault? no: hello world')", "--version failed (exit 0): Segmentation fault? no: hello world"),
    ("print('version: 4589 (1d1e6a90)'); sys.exit(1)", "--version failed (exit 1): version: 4589 (1d1e6a90)"),
    ("print('error while loading shared libraries: libcuda.so.1', file=sys.stderr); sys.exit(127)",
     "--version failed (exit 127): error while loading shared libraries: libcuda.so.1"),
])
def test_it_refuses_a_binary_whose_version_check_fails(tmp_path, body, error):
    with pytest.raises(BuildError) as refused:
        builder.server_version(script(tmp_path, "llama-server", body))
    assert error in str(refused.value)


def test_it_refuses_a_binary_that_does_not_exist_or_cannot_run(tmp_path):
    with pytest.raises(BuildError, match="does not run: .*No such file"):
        builder.server_version(tmp_path / "missing" / "llama-server")
    not_executable = tmp_path / "llama-server"
    not_executable.write_text("plain text")
    with pytest.raises(BuildError, match="llama-server is not executable"):
        builder.server_version(not_executable)


def test_it_refuses_a_binary_that_hangs(tmp_path):
    hangs = script(tmp_path, "llama-server", "import time; time.sleep(30)")
    started = time.monotonic()
    with pytest.raises(BuildError, match="does not run: .*timed out"):
        builder.server_version(hangs, timeout=0.5)
    assert time.monotonic() - started < 10


@pytest.fixture(scope="session")
def real_llama_server():
    """The CPU llama-server the test suite builds once (tests/llama.py); several minutes on a cold machine."""
    return llama.server_binary()


def test_it_reads_the_version_of_a_real_llama_server(real_llama_server):
    version = builder.server_version(real_llama_server)
    assert version["commit"] and version["commit"] in version["version"]
    assert version["build_number"] == 1  # the test repository has one commit: LLAMA_BUILD_NUMBER=1


# --- git checkout through a mirror ---------------------------------------------------------------------
def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def source(tmp_path):
    """A tiny git repository standing in for llama.cpp: tag v1 holds one version of a file."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    git("init", "-q", "-b", "master", cwd=repo)
    (repo / "VERSION").write_text("one\n")
    git("add", "VERSION", cwd=repo)
    git("commit", "-q", "-m", "one", cwd=repo)
    git("tag", "v1", cwd=repo)
    return repo


def checkout(work, repo, ref, folder):
    log = _Log(None)
    Builder(work)._checkout(BuildRequest(build_id=1, source=str(repo), ref=ref), work / folder, log)
    return log


def test_it_checks_out_the_asked_ref_through_a_mirror(tmp_path, source):
    log = checkout(tmp_path / "builds", source, "v1", "a")
    assert (tmp_path / "builds" / "a" / "VERSION").read_text() == "one\n"
    assert "== clone " + str(source) in log.tail()
    [mirror] = (tmp_path / "builds" / "mirrors").iterdir()
    assert git("rev-parse", "--is-bare-repository", cwd=mirror).strip() == "true"


def test_it_fetches_new_commits_into_the_existing_mirror(tmp_path, source):
    checkout(tmp_path / "builds", source, "v1", "a")
    (source / "VERSION").write_text("two\n")
    git("commit", "-q", "-am", "two", cwd=source)
    git("tag", "v2", cwd=source)

    log = checkout(tmp_path / "builds", source, "v2", "b")
    assert (tmp_path / "builds" / "b" / "VERSION").read_text() == "two\n"
    assert "== fetch " + str(source) in log.tail() and "== clone" not in log.tail()
    assert len(list((tmp_path / "builds" / "mirrors").iterdir())) == 1
    # A branch moves too: the fetch brings master's new commit.
    (source / "VERSION").write_text("three\n")
    git("commit", "-q", "-am", "three", cwd=source)
    checkout(tmp_path / "builds", source, "master", "c")
    assert (tmp_path / "builds" / "c" / "VERSION").read_text() == "three\n"


def test_it_fails_a_bad_ref_with_gits_own_words(tmp_path, source):
    with pytest.raises(BuildError) as failed:
        checkout(tmp_path / "builds", source, "no-such-tag", "a")
    assert str(failed.value).startswith("git checkout failed: ")
    message = str(failed.value)
    # git 2.39 says "invalid reference"; older ones "pathspec ... did not match".
    assert "no-such-tag" in message and ("invalid reference" in message or "did not match" in message)


def test_it_fails_a_source_that_is_not_a_git_repository_with_gits_own_words(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError) as failed:
        checkout(tmp_path / "builds", tmp_path / "empty", "v1", "a")
    assert str(failed.value).startswith("git clone failed: ")
    assert "fatal: " in str(failed.value) and str(tmp_path / "empty") in str(failed.value)


# --- cancel ---------------------------------------------------------------------------------------------
def group_members(pgid):
    """Live (non-zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


# A configure step that runs long and has a child of its own, like cmake's compilers.
LONG_STEP = [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); "
                                   "print('[ 10%] Building', flush=True); time.sleep(60)"]


def test_it_cancels_a_running_build_and_kills_its_whole_process_group(tmp_path, source, monkeypatch):
    monkeypatch.setattr(builder, "configure_command", lambda *args, **kwargs: LONG_STEP)
    work = Builder(tmp_path / "builds", jobs=1)
    outcome, progress = {}, []

    def run():
        try:
            work.build(BuildRequest(build_id=7, source=str(source), ref="v1", backend="cpu"), {}, progress.append)
        except BaseException as exc:  # noqa: BLE001 — handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: 7 in work._procs and len(group_members(work._procs[7].pid)) == 2, timeout=30,
                   message="the long step and its child running")
        pgid = work._procs[7].pid
        started = time.monotonic()
        work.cancel(7)
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert time.monotonic() - started < 6  # SIGTERM is enough; no wait for the 60 s step
    finally:
        if 7 in work._procs:
            builder._kill_group(work._procs[7], grace=1)
        thread.join(timeout=30)
    assert isinstance(outcome.get("error"), BuildCancelled)
    assert "cancelled" in str(outcome["error"])
    assert group_members(pgid) == []
    assert any(p["stage"] == "configure" for p in progress)


def test_it_does_not_start_a_build_cancelled_before_its_turn(tmp_path, source, monkeypatch):
    monkeypatch.setattr(builder, "configure_command", lambda *args, **kwargs: LONG_STEP)
    work = Builder(tmp_path / "builds", jobs=1)
    work.cancel(8)
    with pytest.raises(BuildCancelled, match="before it started"):
        work.build(BuildRequest(build_id=8, source=str(source), ref="v1", backend="cpu"), {})
    assert not (tmp_path / "builds" / "8").exists()


def test_it_fails_a_build_step_with_its_last_output(tmp_path, source, monkeypatch):
    failing = [sys.executable, "-c", "import sys; print('CMake Error at CMakeLists.txt:1: no compiler'); sys.exit(1)"]
    monkeypatch.setattr(builder, "configure_command", lambda *args, **kwargs: failing)
    with pytest.raises(BuildError) as failed:
        Builder(tmp_path / "builds", jobs=1).build(BuildRequest(build_id=9, source=str(source), ref="v1"), {})
    assert not isinstance(failed.value, BuildCancelled)
    assert "cmake configure failed (exit 1)" in str(failed.value)
    assert "CMake Error at CMakeLists.txt:1: no compiler" in str(failed.value)


# --- what the build's programs see ----------------------------------------------------------------------
AGENT_SECRETS = {"MORPHEUS_NODE_TOKEN": "node-token-must-not-leak", "MORPHEUS_BROKER_URL": "redis://:pw@panel:6379/0",
                 "HF_TOKEN": "hf_must_not_leak", "SOME_API_KEY": "key-must-not-leak", "DB_PASSWORD": "pw-must-not-leak",
                 "GIT_ASKPASS_TOKEN": "git-token-must-not-leak"}
# A stand-in llama.cpp: configure and compile each dump their environment; the "binary" dumps its own on --version.
ENV_DUMPING_CMAKE = """cmake_minimum_required(VERSION 3.16)
project(envdump NONE)
execute_process(COMMAND env OUTPUT_FILE "${DUMPS}/configure.env")
add_custom_command(OUTPUT "${CMAKE_BINARY_DIR}/bin/llama-server"
  COMMAND "${CMAKE_COMMAND}" -DDUMPS=${DUMPS} -P "${CMAKE_SOURCE_DIR}/compile.cmake"
  COMMAND "${CMAKE_COMMAND}" -E copy "${CMAKE_SOURCE_DIR}/fake-server" "${CMAKE_BINARY_DIR}/bin/llama-server")
add_custom_target(llama-server DEPENDS "${CMAKE_BINARY_DIR}/bin/llama-server")
"""


def test_it_runs_git_cmake_and_the_built_binary_without_the_agents_credentials(tmp_path, monkeypatch):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    repo = tmp_path / "upstream"
    repo.mkdir()
    (repo / "CMakeLists.txt").write_text(ENV_DUMPING_CMAKE.replace("${DUMPS}", str(dumps)))
    (repo / "compile.cmake").write_text('execute_process(COMMAND env OUTPUT_FILE "${DUMPS}/compile.env")\n')
    (repo / "fake-server").write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"open({str(dumps / 'server.env')!r}, 'w').write(''.join(f'{{k}}={{v}}\\n' for k, v in os.environ.items()))\n"
        "print('version: 4589 (1d1e6a90)')\n")
    (repo / "fake-server").chmod(0o755)
    git("init", "-q", "-b", "master", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "env dump", cwd=repo)
    for name, value in AGENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CCACHE_MAXSIZE", "7G")

    result = Builder(tmp_path / "builds", jobs=1).build(BuildRequest(build_id=3, source=str(repo), ref="master",
                                                                     backend="cpu"), {})

    assert result["version"] == "4589 (1d1e6a90)"
    for step in ("configure", "compile", "server"):
        seen = dict(line.split("=", 1) for line in (dumps / f"{step}.env").read_text().splitlines() if "=" in line)
        assert not set(AGENT_SECRETS) & set(seen), step
        assert not any(value in text for value in AGENT_SECRETS.values() for text in seen.values()), step
        assert seen["PATH"] == os.environ["PATH"]
        if step != "server":
            assert seen["CCACHE_DIR"] == str(tmp_path / "builds" / "ccache") and seen["CCACHE_MAXSIZE"] == "7G"
