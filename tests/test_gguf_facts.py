"""Model facts read from a GGUF header: from a file on disk, and over range requests without the whole file."""

import os

import pytest
from gguf import LlamaFileType

from nodes.agent import gguf_facts
from nodes.agent.gguf_facts import GGUFFactsError
from tests.gguf_model import write_tiny_llama

MiB = 1024 * 1024


class CountingFetcher:
    """What an HTTP range fetch would return, counting every range asked for."""

    def __init__(self, path):
        self.data = path.read_bytes()
        self.ranges = []

    def __call__(self, start, end):
        self.ranges.append((start, end))
        return self.data[start : end + 1]

    @property
    def fetched(self):
        return sum(end - start + 1 for start, end in self.ranges)


@pytest.fixture
def gqa_model(tmp_path):
    return write_tiny_llama(tmp_path / "gqa.gguf", n_layers=3, width=96, heads=6, kv_heads=2, context=512,
                            chat_template="{% for m in messages %}{{ m.content }}{% endfor %}", name="gqa-test")


def test_it_reads_the_numbers_a_fit_planner_needs_from_a_local_file(gqa_model):
    facts = gguf_facts.read_local(gqa_model)
    assert facts["architecture"] == "llama"
    assert facts["name"] == "gqa-test"
    assert (facts["layers"], facts["context_length"], facts["embedding_length"]) == (3, 512, 96)
    assert (facts["head_count"], facts["head_count_kv"]) == (6, 2)
    assert facts["feed_forward_length"] == 192
    assert facts["file_type"] == "F32"
    assert facts["has_chat_template"] is True
    assert facts["vocab_size"] == 3 + 256 + 200
    assert facts["tensor_count"] == 3 + 3 * 9  # token_embd, output_norm, output and 9 per layer
    assert 0 < facts["header_bytes"] < gqa_model.stat().st_size


def test_it_counts_parameters_from_the_tensor_shapes(tmp_path):
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    vocab, width, layers = 3 + 256 + 200, 64, 2
    per_layer = 2 * width + 4 * width * width + 3 * 2 * width * width
    assert gguf_facts.read_local(path)["parameters"] == 2 * vocab * width + layers * per_layer + width


def test_it_says_when_a_model_carries_no_chat_template(tmp_path):
    path = write_tiny_llama(tmp_path / "plain.gguf")
    assert gguf_facts.read_local(path)["has_chat_template"] is False


def test_it_reads_the_same_facts_remotely_as_from_the_file(gqa_model):
    fetch = CountingFetcher(gqa_model)
    remote = gguf_facts.read_remote(fetch, gqa_model.stat().st_size, first=4096)
    local = gguf_facts.read_local(gqa_model)
    assert remote.pop("header_fetched") == fetch.fetched
    assert remote == local


def test_it_grows_the_range_until_the_header_fits_and_fetches_no_byte_twice(gqa_model):
    fetch = CountingFetcher(gqa_model)
    facts = gguf_facts.read_remote(fetch, gqa_model.stat().st_size, first=4096)
    assert len(fetch.ranges) > 1
    assert fetch.ranges[0] == (0, 4095)
    for (_, previous_end), (start, end) in zip(fetch.ranges, fetch.ranges[1:]):
        assert start == previous_end + 1  # each request continues where the last stopped
        assert end + 1 == 2 * start  # and doubles what is held
    assert fetch.fetched >= facts["header_bytes"] > fetch.fetched // 2


def test_it_fetches_only_the_header_of_a_large_file(tmp_path):
    path = write_tiny_llama(tmp_path / "padded.gguf", pad_to=64 * MiB)
    fetch = CountingFetcher(path)
    facts = gguf_facts.read_remote(fetch, path.stat().st_size)
    assert facts["architecture"] == "llama" and facts["layers"] == 2
    assert fetch.ranges == [(0, gguf_facts.FIRST_FETCH - 1)]
    assert fetch.fetched <= path.stat().st_size // 32


def test_it_explains_that_a_local_non_gguf_file_is_not_readable(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 Not Found</html>\n" * 100)
    with pytest.raises(GGUFFactsError, match="model.gguf is not a readable GGUF file"):
        gguf_facts.read_local(path)


def test_it_explains_that_a_truncated_local_file_is_not_readable(tmp_path):
    path = write_tiny_llama(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GGUFFactsError, match="cut.gguf is not a readable GGUF file"):
        gguf_facts.read_local(cut)


def test_it_gives_up_on_a_remote_non_gguf_file_after_the_first_range(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(os.urandom(MiB) * 24)
    fetch = CountingFetcher(path)
    with pytest.raises(GGUFFactsError, match="not a GGUF file"):
        gguf_facts.read_remote(fetch, path.stat().st_size)
    assert fetch.fetched <= gguf_facts.FIRST_FETCH


def test_it_explains_a_remote_file_too_short_to_be_a_model(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(GGUFFactsError, match="GGUF"):
        gguf_facts.read_remote(CountingFetcher(path), path.stat().st_size)


@pytest.mark.parametrize("value, name", [
    (LlamaFileType.ALL_F32, "F32"),
    (LlamaFileType.MOSTLY_F16, "F16"),
    (LlamaFileType.MOSTLY_Q8_0, "Q8_0"),
    (LlamaFileType.MOSTLY_Q4_K_M, "Q4_K_M"),
    (int(LlamaFileType.MOSTLY_IQ2_XS), "IQ2_XS"),
    (9999, None),
    (None, None),
    ("junk", None),
])
def test_it_names_the_file_type_as_providers_know_it(value, name):
    assert gguf_facts.file_type_name(value) == name
