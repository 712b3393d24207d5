"""The checks on repo ids, revisions and file names that stand between a provider's input and a rig's disk."""

import pytest

from nodes.agent import validation
from nodes.agent.validation import InvalidValue


@pytest.mark.parametrize("value", [
    "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
    "NousResearch/Hermes-3-Llama-3.1-8B-GGUF",
    "Qwen/Qwen2.5-7B-Instruct-GGUF",
    "a/b",
])
def test_it_accepts_real_repo_ids(value):
    assert validation.repo_id(f"  {value} ") == value


@pytest.mark.parametrize("value", [
    "", None, "TinyLlama", "a/b/c", "../etc", "org/..", "org/a..b", "/org/repo", "org/repo/", "-org/repo",
    "org/.hidden", "org /repo", "org/re po", "org/repo\x00", "org\\repo", "org/" + "x" * 97,
])
def test_it_refuses_what_is_not_a_repo_id(value):
    with pytest.raises(InvalidValue, match="is not a Hugging Face repo id"):
        validation.repo_id(value)


@pytest.mark.parametrize("value", ["main", "v1.0", "refs/pr/12", "0123456789abcdef0123456789abcdef01234567"])
def test_it_accepts_branches_tags_and_commits(value):
    assert validation.revision(value) == value


def test_it_reads_an_empty_revision_as_main():
    assert validation.revision("") == "main"
    assert validation.revision(None) == "main"


@pytest.mark.parametrize("value", ["../main", "refs/../../x", "main/", "-rf", "/main", "main branch", "m\x00", "x" * 201])
def test_it_refuses_revisions_that_could_escape_a_url(value):
    with pytest.raises(InvalidValue, match="is not a valid revision"):
        validation.revision(value)


@pytest.mark.parametrize("value", [
    "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
    "Q4_K_M/Meta-Llama-3.1-70B-Instruct-Q4_K_M-00001-of-00002.gguf",
    "model.GGUF",
    "a/b/c/model+extra.gguf",
])
def test_it_accepts_gguf_files_inside_a_repo(value):
    assert validation.gguf_filename(value) == value


@pytest.mark.parametrize("value, reason", [
    ("../model.gguf", "not a safe file name"),
    ("sub/../../etc/model.gguf", "not a safe file name"),
    ("./model.gguf", "not a safe file name"),
    ("a//model.gguf", "not a safe file name"),
    ("~/model.gguf", "not a safe file name"),
    ("/etc/model.gguf", "not a file name inside the repository"),
    ("\\\\server\\share\\model.gguf", "not a file name inside the repository"),
    ("sub\\..\\model.gguf", "not a file name inside the repository"),
    ("model\x00.gguf", "not a file name inside the repository"),
    ("", "not a file name inside the repository"),
    (".hidden.gguf", "not a safe file name"),
    ("sub/.cache/model.gguf", "not a safe file name"),
    ("a/b/c/d/model.gguf", "not a safe file name"),
    ("model.bin", "not a GGUF file"),
    ("README.md", "not a GGUF file"),
    ("model.gguf.part", "not a GGUF file"),
])
def test_it_refuses_unsafe_or_non_gguf_file_names(value, reason):
    with pytest.raises(InvalidValue, match=reason):
        validation.gguf_filename(value)


@pytest.mark.parametrize("name, expected", [
    ("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", ("qwen2.5-7b-instruct-q4_k_m", 1, 2)),
    ("Q4_K_M/Llama-70B-Q4_K_M-00003-of-00003.gguf", ("Llama-70B-Q4_K_M", 3, 3)),
    ("Big-00002-of-00010.GGUF", ("Big", 2, 10)),
    ("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", None),
    ("model-0001-of-0003.gguf", None),
    ("model-00001-of-00003.gguf.part", None),
])
def test_it_recognises_split_model_shards(name, expected):
    assert validation.split_info(name) == expected


@pytest.mark.parametrize("name, quant", [
    ("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "Q4_K_M"),
    ("Hermes-3-Llama-3.1-8B.Q8_0.gguf", "Q8_0"),
    ("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", "Q4_K_M"),
    ("Meta-Llama-3.1-8B-Instruct-IQ2_XS.gguf", "IQ2_XS"),
    ("Mistral-7B-Instruct-v0.3-IQ4_NL.gguf", "IQ4_NL"),
    ("gemma-2-9b-it-Q5_K_S.gguf", "Q5_K_S"),
    ("model-f16.gguf", "F16"),
    ("model-BF16.gguf", "BF16"),
    ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
    ("Q8_0/Qwen3-32B-Q8_0-00001-of-00002.gguf", "Q8_0"),
    ("Qwen3-8B.gguf", ""),
    ("llama-3.1-8b-instruct.gguf", ""),
])
def test_it_reads_the_quant_from_the_file_name(name, quant):
    assert validation.quant_from_name(name) == quant
