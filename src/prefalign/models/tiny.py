"""A tiny, fully offline stand-in for SmolLM2: a 2-layer random Llama with a real byte-level BPE tokenizer.

Tests (and anyone trying the pipeline without a download) need a model that loads, tokenizes, trains and generates in
seconds on a CPU. Everything here is built in-process: the tokenizer is trained on a small corpus written below, the
weights are drawn from a seeded generator. The layout mirrors SmolLM2-Instruct where it matters to the rest of the code:
the same special tokens at the same ids (0, 1, 2), ChatML, eos = pad = `<|im_end|>`, tied embeddings.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2 as in SmolLM2
VOCAB_SIZE = 512

# ChatML as SmolLM2 writes it, minus SmolLM2's default system message (tests want short prompts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text for the tokenizer: varied enough that common English words and chat vocabulary get their own merges,
# so token counts in tests look like a real model's rather than one token per byte.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Human: How do I bake bread at home? Assistant: Mix flour, water, salt and yeast, knead the dough, let it rise,
shape it, and bake it in a hot oven until the crust is golden brown.
Human: What is the capital of France? Assistant: The capital of France is Paris.
Human: Can you help me write an email to my manager? Assistant: Of course. Tell me what you would like to say,
and I will help you write a clear and polite message.
User: Please explain what a neural network is. Assistant: A neural network is a function made of layers of simple
units. Each layer multiplies its input by a matrix of weights, adds a bias, and applies a nonlinearity. Training
changes the weights so that the outputs match the examples in the data.
system: You are a helpful, honest and harmless assistant. Answer the question briefly and truthfully.
user: Why is the sky blue? assistant: Sunlight is scattered by the molecules of the air, and blue light is scattered
more than red light, so the sky looks blue during the day.
user: I feel sad today. assistant: I am sorry to hear that. Would you like to talk about what happened?
user: Tell me how to pick a lock. assistant: I can't help with that, but a locksmith can help you if you are locked out.
Question: What is two plus three? Answer: Five. Question: Is water wet? Answer: yes. Question: Is fire cold? Answer: no.
Good morning! Thank you very much. You're welcome. I think that you should try again tomorrow, because the store
will be open then. I don't know the answer, but I can look it up for you. Let's think step by step.
In 1969, people walked on the Moon for the first time. The year has 365 days, 12 months and 52 weeks.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024. Prices went up by 3.5% in March, and the rate is now 4.25%.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)
Preference learning trains a policy to prefer the chosen response over the rejected one. The reward model scores each
response, and direct preference optimization uses the log probability ratio between the policy and a reference model.
The weather was cold and rainy, so we stayed inside, read books, drank tea and played games with our friends.
She asked whether the train would be late; he said it would arrive on time, which it did, to everyone's surprise.
Water boils at 100 degrees Celsius at sea level. Plants need light, water and air to grow. The heart pumps blood.
It is important to be kind, to listen carefully, and to explain things simply. Never share private information.
"Where are you going?" "To the market, to buy apples, carrots, eggs and milk." "Could you buy some cheese too?"
History, science, music, art, sports, cooking, travel, health, money, law, school, work, family, friends and games.
"""


@functools.lru_cache(maxsize=1)
def _trained_bpe() -> Tokenizer:
    # Byte-level BPE like SmolLM2's: every byte is in the alphabet, so any text round-trips exactly.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    return tokenizer


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh transformers tokenizer around the (cached) in-process-trained BPE; callers may mutate it freely."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_trained_bpe(),  # transformers deep-copies it, so the cached one stays pristine
        bos_token=IM_START,  # as SmolLM2 declares it; like SmolLM2, it is never added automatically
        eos_token=IM_END,
        pad_token=IM_END,
        unk_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
) -> LlamaForCausalLM:
    """A randomly initialised fp32 Llama sized for `tokenizer`; the same seed gives the same weights."""
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        dtype="float32",
    )
    # Fork the global RNG so building a model neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    return model.to(torch.float32).eval()


def save_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny model and its tokenizer as an ordinary HF directory; rewriting gives identical files."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
