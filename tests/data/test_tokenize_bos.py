"""BOS before the prompt for tokenizers that add it themselves (data/tokenize.py::encode): Gemma
and Llama expect it; SmolLM2's tokenizer adds none, so its ids are unchanged."""
import pytest

from rlhfkit.data.tokenize import encode


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A word-level tokenizer whose post-processor puts <bos> first, as Gemma's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "a": 3, "b": 4, "c": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                       special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def test_bos_comes_first_and_counts_within_max_prompt_length(bos_tokenizer):
    assert bos_tokenizer("a b")["input_ids"] == [0, 3, 4]  # the tokenizer adds BOS itself
    assert encode(bos_tokenizer, "a b c", "a", 8, 16).prompt_ids == [0, 3, 4, 5]
    assert encode(bos_tokenizer, "a b c", None, 3, 16).prompt_ids == [0, 4, 5]  # cut from left
    assert encode(bos_tokenizer, "<bos> a", None, 8, 16).prompt_ids == [0, 3]  # never twice
    assert encode(bos_tokenizer, "", "a", 8, 16).prompt_ids == [0]


def test_a_tokenizer_without_bos_keeps_its_ids(tokenizer):
    """tiny-llama's (SmolLM2's) tokenizer adds no BOS: the prompt ids are the text's own."""
    ids = tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    assert encode(tokenizer, "Hello there", None, 32, 64).prompt_ids == ids
