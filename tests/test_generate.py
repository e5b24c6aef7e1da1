"""The one generation path: equal to HF greedy decoding, batch-invariant sampling, stopping, and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from prefalign.cli import main
from prefalign.data.tokenize import prompt_token_ids
from prefalign.errors import PrefalignError
from prefalign.generate import GenerationConfig, PromptPrefills, generate, prompt_seed, sample_next
from prefalign.models.loading import load_model, load_tokenizer

# Different lengths (so batches are left-padded), raw strings and chat messages.
PROMPTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog, and then",
    [{"role": "user", "content": "What is the capital of France?"}],
    "Why is the sky blue?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about bread."}],
]

# Chat prompts of different lengths: the chat template and the system turn open every one with the same tokens.
CHAT_PROMPTS = [
    [{"role": "system", "content": "You are a careful assistant."}, {"role": "user", "content": text}]
    for text in (
        "What is the capital of France?",
        "Hi",
        "Write a haiku about the sea, in lowercase letters only.",
        "Why is the sky blue?",
        "Name three red fruits, please.",
    )
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weights redrawn 10x larger, saved as an HF directory.

    At the tiny model's 0.02 init the logits are nearly flat and greedy decoding emits the same token for every prompt,
    so a padding or position mistake would go unnoticed. Larger weights make every prompt's output its own.
    """
    model = load_model(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2, generator=generator)
    path = tmp_path_factory.mktemp("lively") / "model"
    model.save_pretrained(path)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(model_dir: Path):
    return load_model(str(model_dir)), load_tokenizer(str(model_dir))


def _hf_greedy(model, tokenizer, prompts, max_new_tokens: int) -> list[list[int]]:
    """HF `generate`, greedy, on one left-padded batch; each row cut after its first eos like ours."""
    rows = [prompt_token_ids(p, tokenizer, "auto") for p in prompts]
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    new = out[:, batch["input_ids"].shape[1] :].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in new]


# --- decoding ----------------------------------------------------------------------------------------------------


def test_greedy_equals_hf_generate_with_left_padding(tiny) -> None:
    model, tokenizer = tiny
    lengths = {len(prompt_token_ids(p, tokenizer, "auto")) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # every row is padded differently
    ours = generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=12, batch_size=8), progress=False)
    assert [g.token_ids for g in ours] == _hf_greedy(model, tokenizer, PROMPTS, 12)


def test_outputs_come_back_in_input_order_whatever_the_batching(tiny) -> None:
    model, tokenizer = tiny
    alone = [generate(model, tokenizer, [p], GenerationConfig(max_new_tokens=8), progress=False)[0] for p in PROMPTS]
    batched = generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=2), progress=False)
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


def test_sampling_is_per_prompt_reproducible_and_batch_invariant(tiny) -> None:
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    target = PROMPTS[2]
    alone = generate(model, tokenizer, [target], config, progress=False)[0]
    in_batch = generate(model, tokenizer, [PROMPTS[1], target, PROMPTS[0]], config, progress=False)[1]
    in_other_batch = generate(model, tokenizer, PROMPTS[::-1], replace(config, batch_size=2), progress=False)[2]
    assert alone.token_ids == in_batch.token_ids == in_other_batch.token_ids
    greedy = generate(model, tokenizer, [target], GenerationConfig(max_new_tokens=16), progress=False)[0]
    other_seed = generate(model, tokenizer, [target], replace(config, seed=8), progress=False)
    # A random tiny model is close to uniform at temperature 1: a real sample differs from greedy and across seeds.
    assert alone.token_ids != greedy.token_ids
    assert alone.token_ids != other_seed[0].token_ids


def test_sample_equals_a_naive_uncached_loop_with_the_prompts_own_draws(tiny) -> None:
    # The contract a resumable caller relies on: step t of prompt P uses draw t of the generator seeded
    # prompt_seed(seed, P), and the KV-cached batched loop computes what a plain uncached loop computes.
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=5)
    prompt = PROMPTS[3]
    draws = torch.rand(config.max_new_tokens, generator=torch.Generator().manual_seed(prompt_seed(5, prompt)))
    ids = prompt_token_ids(prompt, tokenizer, "auto")
    expected = []
    with torch.inference_mode():
        for step in range(config.max_new_tokens):
            logits = model(torch.tensor([ids + expected])).logits[:, -1, :]
            expected.append(sample_next(logits, 0.9, 0.9, draws[step : step + 1]).item())
            if expected[-1] == tokenizer.eos_token_id:
                break
    assert generate(model, tokenizer, [PROMPTS[0], prompt], config, progress=False)[1].token_ids == expected


def test_prompt_seed_is_stable_and_depends_on_seed_and_text() -> None:
    assert prompt_seed(0, "hello") == prompt_seed(0, "hello")
    assert len({prompt_seed(0, "hello"), prompt_seed(1, "hello"), prompt_seed(0, "hello!")}) == 3
    messages = [{"role": "user", "content": "hello"}]
    assert prompt_seed(0, messages) != prompt_seed(0, "hello")
    assert 0 <= prompt_seed(123, messages) < 2**63


def test_eos_stops_a_row_and_sets_finish_reason(tiny) -> None:
    model, tokenizer = tiny
    free = generate(model, tokenizer, PROMPTS[:2], GenerationConfig(max_new_tokens=6), progress=False)
    assert [g.finish_reason for g in free] == ["length", "length"]
    assert [g.num_tokens for g in free] == [6, 6]
    # Declare the 3rd token the first row generated a stop token: that row now ends there, the other is unchanged
    # (unless it emits the same token, which the assertion would reveal).
    stop = free[0].token_ids[2]
    assert stop not in free[1].token_ids
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        stopped = generate(model, tokenizer, PROMPTS[:2], GenerationConfig(max_new_tokens=6), progress=False)
        calls.clear()
        generate(model, tokenizer, PROMPTS[:1], GenerationConfig(max_new_tokens=6), progress=False)
    finally:
        hook.remove()
        model.generation_config.eos_token_id = saved
    first, second = stopped
    assert first.token_ids == free[0].token_ids[:3] and first.finish_reason == "eos" and first.num_tokens == 3
    assert second.token_ids == free[1].token_ids and second.finish_reason == "length"
    assert first.text == tokenizer.decode(first.token_ids, skip_special_tokens=True).strip()
    assert len(calls) == 3  # prefill + 2 steps: the batch stops as soon as every row is done


def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(tiny) -> None:
    # Finished rows are dropped from the batch and its KV cache mid-decoding; every row must still get exactly what it
    # gets alone, for sampling as for greedy, whichever rows leave and when.
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=3)
    free = generate(model, tokenizer, PROMPTS, config, progress=False)
    # Stop tokens drawn from different steps of different rows, so rows leave the batch at different times.
    stops = {free[0].token_ids[1], free[2].token_ids[4], free[3].token_ids[7]}
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *stops]
    try:
        batched = generate(model, tokenizer, PROMPTS, config, progress=False)
        alone = [generate(model, tokenizer, [p], config, progress=False)[0] for p in PROMPTS]
    finally:
        model.generation_config.eos_token_id = saved
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    lengths = [g.num_tokens for g in batched]
    assert len(set(lengths)) >= 3 and max(lengths) > min(lengths)  # rows really did leave at different steps
    for row, generation in zip(free, batched):  # each is the free run cut at its first stop token
        cut = next((i + 1 for i, t in enumerate(row.token_ids) if t in stops), len(row.token_ids))
        assert generation.token_ids == row.token_ids[:cut]


def test_continuous_batching_refills_slots_and_matches_each_prompt_alone(tiny) -> None:
    # Two slots for five prompts: the queue refills a slot as soon as its row stops, rows finish at different steps
    # (extra stop tokens), and long answers make the cache drop the columns no row in use still reaches.
    model, tokenizer = tiny
    for config in (GenerationConfig(max_new_tokens=48), GenerationConfig(max_new_tokens=48, temperature=1.0, seed=4)):
        free = generate(model, tokenizer, PROMPTS, config, progress=False)
        stops = {free[1].token_ids[5], free[3].token_ids[30]}
        saved = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *stops]
        try:
            two_slots = generate(model, tokenizer, PROMPTS, replace(config, batch_size=2), progress=False)
            alone = [generate(model, tokenizer, [p], config, progress=False)[0] for p in PROMPTS]
        finally:
            model.generation_config.eos_token_id = saved
        assert [g.token_ids for g in two_slots] == [g.token_ids for g in alone]
        assert len({g.num_tokens for g in two_slots}) >= 2


def test_a_shared_prompt_prefix_prefilled_once_changes_no_answer(tiny) -> None:
    # Every chat prompt opens with the template's tokens: they are prefilled once and each prompt prefills only the
    # rest of itself on top. Greedy answers must equal HF's (which prefills every prompt whole), and every answer,
    # greedy or sampled, what the prompt gets alone (one prompt: nothing shared), with the slots refilled or not.
    from prefalign.generate.decode import shared_prefix_length

    model, tokenizer = tiny
    encoded = [prompt_token_ids(p, tokenizer, "auto") for p in CHAT_PROMPTS]
    assert shared_prefix_length(encoded) >= 8 and len({len(ids) for ids in encoded}) == len(encoded)
    greedy = GenerationConfig(max_new_tokens=12, batch_size=8)
    ours = generate(model, tokenizer, CHAT_PROMPTS, greedy, progress=False)
    assert [g.token_ids for g in ours] == _hf_greedy(model, tokenizer, CHAT_PROMPTS, 12)
    for config in (greedy, GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=6)):
        alone = [generate(model, tokenizer, [p], config, progress=False)[0].token_ids for p in CHAT_PROMPTS]
        for slots in (2, 8):
            batched = generate(model, tokenizer, CHAT_PROMPTS, replace(config, batch_size=slots), progress=False)
            assert [g.token_ids for g in batched] == alone


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own() -> None:
    from prefalign.generate.decode import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter keeps its last token
    assert shared_prefix_length([[1, 2], [1, 2]]) == 1
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0  # one prompt: nothing to share


def test_length_groups_bound_the_padding_of_a_prefill() -> None:
    from prefalign.generate.decode import length_groups

    lengths = [40, 100, 90, 88, 50, 89, 45]
    groups = length_groups(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert groups == [[1, 2, 5, 3], [4, 6], [0]]
    for group in groups:  # longest first, none shorter than 7/8 of its group's longest
        assert [lengths[i] for i in group] == sorted((lengths[i] for i in group), reverse=True)
        assert min(lengths[i] for i in group) >= 7 / 8 * lengths[group[0]]


def test_a_joining_prompt_longer_than_the_rows_in_use_gets_columns_on_the_left(tiny) -> None:
    # `generate` queues prompts longest first; the batch itself must also take them in any order.
    from prefalign.generate.decode import ContinuousBatch, DecodeSettings

    model, tokenizer = tiny
    prompts = sorted((prompt_token_ids(p, tokenizer, "auto") for p in PROMPTS), key=len)
    settings = DecodeSettings(8, 0.0, 1.0, 2, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    with torch.inference_mode():
        together = ContinuousBatch(model, prompts, None, settings).run()
        alone = [ContinuousBatch(model, [p], None, settings).run()[0] for p in prompts]
    assert [d.token_ids for d in together] == [d.token_ids for d in alone]


@pytest.mark.parametrize("prompts", [PROMPTS, CHAT_PROMPTS], ids=["mixed", "shared-prefix"])
def test_kl_from_a_reference_decoded_alongside_equals_scoring_the_answers(
    tiny, tiny_model_dir: Path, prompts: list
) -> None:
    from prefalign.data.collate import pad_sequences
    from prefalign.scoring.completions import completion_kl
    from prefalign.scoring.run import score_completions

    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=2, batch_size=2)
    itself = generate(model, tokenizer, prompts, config, reference=model, progress=False)
    assert all(g.kl == pytest.approx(0.0, abs=1e-6) and g.logratio == pytest.approx(0.0, abs=1e-6) for g in itself)
    other = load_model(str(tiny_model_dir))
    drift = generate(model, tokenizer, prompts, config, reference=other, progress=False)
    assert [g.token_ids for g in drift] == [g.token_ids for g in itself]  # the reference never changes the sample
    lm = pad_sequences([prompt_token_ids(p, tokenizer, "auto") for p in prompts], [g.token_ids for g in drift], 0)
    with torch.inference_mode():
        policy_states, policy_logps = score_completions(model, lm)
        base_states, base_logps = score_completions(other, lm)
        kl = completion_kl(policy_states, base_states)
    assert [g.kl for g in drift] == pytest.approx(kl.tolist(), rel=1e-4, abs=1e-4)
    logratio = (policy_logps.sum_logps - base_logps.sum_logps).tolist()
    assert [g.logratio for g in drift] == pytest.approx(logratio, rel=1e-4, abs=1e-4)
    assert min(g.kl for g in drift) > 0.1


@pytest.mark.parametrize("prompts", [PROMPTS, CHAT_PROMPTS], ids=["mixed", "shared-prefix"])
def test_kept_prefills_change_no_sample_and_no_kl(tiny, tiny_model_dir: Path, prompts: list) -> None:
    # The evaluation's order: the base's greedy pass, the policy's, then its KL samples with the base alongside,
    # on the first prompts only, each model's prompt prefills taken from its greedy pass.
    model, tokenizer = tiny
    base = load_model(str(tiny_model_dir))
    greedy = GenerationConfig(max_new_tokens=6, batch_size=3)
    sampled = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=4, batch_size=2)
    kl_prompts = prompts[:4]
    policy_kept, base_kept = PromptPrefills(keep=kl_prompts), PromptPrefills(keep=kl_prompts)
    plain = generate(base, tokenizer, prompts, greedy, progress=False)
    assert generate(base, tokenizer, prompts, greedy, progress=False, prefills=base_kept) == plain
    generate(model, tokenizer, prompts, greedy, progress=False, prefills=policy_kept)
    assert len(policy_kept.entries) == len(base_kept.entries) == 4  # the KL prompts only
    fresh = generate(model, tokenizer, kl_prompts, sampled, reference=base, progress=False)
    kept = {"prefills": policy_kept, "reference_prefills": base_kept}
    reused = generate(model, tokenizer, kl_prompts, sampled, reference=base, progress=False, **kept)
    assert (policy_kept.reused, base_kept.reused) == (4, 4)  # no prompt prefilled again
    assert [g.token_ids for g in reused] == [g.token_ids for g in fresh]
    assert [g.kl for g in reused] == pytest.approx([g.kl for g in fresh], rel=1e-5, abs=1e-5)
    assert [g.logratio for g in reused] == pytest.approx([g.logratio for g in fresh], rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="another model"):
        generate(base, tokenizer, kl_prompts, greedy, progress=False, prefills=policy_kept)


def test_kept_prefills_serve_a_call_whose_shared_prefix_is_longer(tiny) -> None:
    # Kept from all the chat prompts (their shared prefix: the template's opening), used by two that share more of
    # their system turn: the kept keys past the longer prefix are the ones used.
    model, tokenizer = tiny
    kept = PromptPrefills()
    config = GenerationConfig(max_new_tokens=8, batch_size=8)
    generate(model, tokenizer, CHAT_PROMPTS, config, progress=False, prefills=kept)
    pair = CHAT_PROMPTS[1:3]
    alone = generate(model, tokenizer, pair, config, progress=False)
    assert generate(model, tokenizer, pair, config, progress=False, prefills=kept) == alone
    assert kept.reused == 2


def test_bfloat16_generation_leaves_the_callers_model_as_it_was(tiny) -> None:
    model, tokenizer = tiny
    model.train()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = GenerationConfig(max_new_tokens=6, dtype="bfloat16")
    out = generate(model, tokenizer, PROMPTS[:2], config, progress=False)
    assert [g.num_tokens for g in out] == [6, 6]
    assert model.training and model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"  # the copy attended in fp32 (generate.attention), not the model
    assert all(torch.equal(weights[name], p) for name, p in model.named_parameters())
    model.eval()


def test_top_p_over_the_head_candidates_equals_the_full_sort() -> None:
    # Peaked rows (their head holds the top-p mass) and flat rows (it does not: the full sort) in one batch.
    generator = torch.Generator().manual_seed(0)
    vocab = 3000
    logits = torch.randn(64, vocab, generator=generator) * torch.linspace(0.5, 12.0, 64)[:, None]
    uniforms = torch.rand(64, generator=generator)
    for top_p in (0.5, 0.9, 0.95, 0.999):
        probs = torch.softmax(logits / 0.8, dim=-1)
        ranked, order = probs.sort(dim=-1, descending=True)
        kept = ranked.masked_fill(ranked.cumsum(dim=-1) - ranked >= top_p, 0.0)
        cdf = kept.cumsum(dim=-1)
        target = torch.minimum(uniforms[:, None] * cdf[:, -1:], torch.nextafter(cdf[:, -1:], torch.zeros(1)))
        expected = order.gather(-1, torch.searchsorted(cdf, target, right=True)).squeeze(-1)
        assert torch.equal(sample_next(logits, 0.8, top_p, uniforms), expected)


def test_empty_raw_prompt_is_refused(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(PrefalignError, match="prompt 2 is empty"):
        generate(model, tokenizer, ["Hi", ""], GenerationConfig(prompt_format="raw"), progress=False)
    assert generate(model, tokenizer, [], GenerationConfig(), progress=False) == []


# --- sampling arithmetic -----------------------------------------------------------------------------------------


def _counts(logits: list[float], temperature: float, top_p: float, draws: int = 1000) -> list[int]:
    # Evenly spaced draws: inverse-CDF sampling must then hit each token exactly in proportion to its probability.
    rows = torch.tensor([logits]).repeat(draws, 1)
    uniforms = (torch.arange(draws) + 0.5) / draws
    tokens = sample_next(rows, temperature, top_p, uniforms)
    return torch.bincount(tokens, minlength=len(logits)).tolist()


def test_sampling_follows_the_softmax_of_logits_over_temperature() -> None:
    logits = [math.log(0.2), math.log(0.5), math.log(0.3)]
    assert _counts(logits, 1.0, 1.0) == [200, 500, 300]
    # Temperature 0.5 squares the probabilities before renormalising: 0.04, 0.25, 0.09 over 0.38.
    assert _counts(logits, 0.5, 1.0) == [105, 658, 237]


def test_top_p_keeps_the_smallest_head_reaching_p() -> None:
    logits = [math.log(0.2), math.log(0.5), math.log(0.3)]
    # 0.5 alone is below 0.6, 0.5 + 0.3 reaches it: 0.2 is cut, the rest renormalised to 0.625 / 0.375.
    assert _counts(logits, 1.0, 0.6) == [0, 625, 375]
    assert _counts(logits, 1.0, 0.5) == [0, 1000, 0]  # the top token alone reaches 0.5
    assert _counts(logits, 1.0, 1e-6) == [0, 1000, 0]


def test_a_draw_next_to_one_never_picks_an_impossible_token() -> None:
    logits = torch.tensor([[0.0, 1.0, float("-inf")], [2.0, float("-inf"), float("-inf")]])
    largest_draw = torch.tensor([1.0 - 2**-24, 1.0 - 2**-24])
    assert sample_next(logits, 1.0, 1.0, largest_draw).tolist() == [1, 0]
    assert sample_next(logits, 1.0, 0.9, largest_draw).tolist() == [0, 0]
    assert sample_next(logits, 0.0, 1.0, None).tolist() == [1, 0]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a number >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"prompt_format": "json"}, "prompt_format must be auto, chat or raw"),
        ({"dtype": "float16"}, "dtype must be one of model, auto, float32, bfloat16"),
    ],
)
def test_invalid_generation_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(PrefalignError, match=message):
        GenerationConfig(**options)


# --- the CLI -----------------------------------------------------------------------------------------------------


def test_cli_single_prompt_prints_the_response(tiny, model_dir: Path, capsys) -> None:
    model, tokenizer = tiny
    expected = generate(model, tokenizer, ["Hello there"], GenerationConfig(max_new_tokens=5), progress=False)[0]
    assert main(["generate", "--model", str(model_dir), "--prompt", "Hello there", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == expected.text + "\n"


def test_cli_prompts_file_to_jsonl(tiny, model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Hi", "id": 7}) + "\n\n" + json.dumps({"prompt": PROMPTS[2], "tags": ["geo"]}) + "\n"
    )
    config = tmp_path / "gen.yaml"
    config.write_text("max_new_tokens: 4\ntemperature: 0.8\n")
    out = tmp_path / "out" / "gen.jsonl"
    args = ["generate", "--model", str(model_dir), "--prompts", str(prompts), "-o", str(out)]
    assert main([*args, "--config", str(config), "--seed", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] if "id" in r else r["tags"] for r in rows] == [7, ["geo"]]
    assert rows[1]["prompt"] == PROMPTS[2]
    assert rows[0]["generation"] == {
        "max_new_tokens": 4,
        "temperature": 0.8,
        "top_p": 1.0,
        "seed": 3,
        "batch_size": 16,
        "prompt_format": "auto",
        "dtype": "model",
    }
    assert all(r["model"] == str(model_dir) and r["finish_reason"] in ("eos", "length") for r in rows)
    model, tokenizer = tiny
    settings = GenerationConfig(max_new_tokens=4, temperature=0.8, seed=3)
    direct = generate(model, tokenizer, ["Hi", PROMPTS[2]], settings, progress=False)
    assert [r["response"] for r in rows] == [g.text for g in direct]
    assert [r["num_tokens"] for r in rows] == [g.num_tokens for g in direct]
    assert [p.name for p in out.parent.iterdir()] == ["gen.jsonl"]  # no temporary file left


def test_cli_txt_prompts_one_per_line(tiny, model_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi\n\nWhy is the sky blue?\n")
    assert main(["generate", "--model", str(model_dir), "--prompts", str(prompts), "--max-new-tokens", "3"]) == 0
    model, tokenizer = tiny
    direct = generate(model, tokenizer, ["Hi", "Why is the sky blue?"], GenerationConfig(max_new_tokens=3))
    assert capsys.readouterr().out == "".join(g.text + "\n" for g in direct)


@pytest.mark.parametrize(
    "content, where, reason",
    [
        ('{"prompt": "Hi"}\n{"prompt": "Hi",}\n', ":2", "not valid JSON"),
        ('{"prompt": "Hi"}\n\n{"text": "Hi"}\n', ":3", "missing field `prompt`"),
        ('{"prompt": [{"role": "user"}]}\n', ":1", "prompt message 1 is not a {role, content} pair"),
        ('{"prompt": "Hi", "response": "x"}\n', ":1", "field `response` is written by generate"),
        ('["Hi"]\n', ":1", "expected a JSON object"),
    ],
)
def test_cli_bad_prompt_line_is_one_line_naming_file_and_line(
    model_dir: Path, tmp_path: Path, capsys, content: str, where: str, reason: str
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(model_dir), "--prompts", str(prompts), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prefalign: error: {prompts}{where}: {reason}")
    assert err.count("\n") == 1 and not out.exists()


def test_cli_json_list_of_prompts(model_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "Hi"}, {"prompt": "Hello"}]))
    assert main(["generate", "--model", str(model_dir), "--prompts", str(prompts), "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    prompts.write_text(json.dumps([{"prompt": "Hi"}, {"prompt": ""}]))
    assert main(["generate", "--model", str(model_dir), "--prompts", str(prompts)]) == 2
    assert capsys.readouterr().err == f"prefalign: error: {prompts}: item 2: empty prompt\n"


def test_cli_missing_prompts_file_and_unknown_model(model_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["generate", "--model", str(model_dir), "--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert f"--prompts {tmp_path / 'none.jsonl'}: no such file" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nomodel"), "--prompt", "Hi"]) == 2
    assert "nomodel' not found" in capsys.readouterr().err


# --- the real model ----------------------------------------------------------------------------------------------


@pytest.mark.model
def test_smollm2_knows_the_capital_of_france(smollm2_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PREFALIGN_HOME", str(smollm2_dir.parent.parent))
    prompt = "What is the capital of France?"
    assert main(["generate", "--model", "smollm2-135m-instruct", "--prompt", prompt, "--max-new-tokens", "24"]) == 0
    assert "Paris" in capsys.readouterr().out
