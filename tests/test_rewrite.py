"""Rewrite pairs and the minimum score gap: each edit satisfies its checker, the verifier has the last word, and
`pairs build --rewrite / --min-score-gap` write, count and resume them (generation replaced by fixed answers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import prefalign.generate
from prefalign.data import load_preferences
from prefalign.errors import PrefalignError
from prefalign.generate import Generation
from prefalign.judges import JudgeItem, VerifierJudge
from prefalign.pairs import PairsConfig, build_pairs, pair_stats, read_prompt_records, skipped_path
from prefalign.pairs.rewrite import REWRITES, rewrite_response, trim_to_boundary

VERIFIER = VerifierJudge()
ANSWER = "Plants need water, light and soil. They grow slowly, but they grow well."


def meta(*instructions: tuple[str, dict]) -> dict:
    return {"instruction_id_list": [i for i, _ in instructions], "kwargs": [k for _, k in instructions]}


@pytest.mark.parametrize(
    "instruction, kwargs",
    [
        ("change_case:english_lowercase", {}),
        ("change_case:english_capital", {}),
        ("punctuation:no_comma", {}),
        ("startend:quotation", {}),
        ("startend:end_checker", {"end_phrase": "Any other questions?"}),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}),
        ("detectable_content:postscript", {"postscript_marker": "P.P.S"}),
        ("detectable_format:title", {}),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 1}),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}),
        ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}),
        ("length_constraints:number_words", {"num_words": 10, "relation": "less than"}),
        ("keywords:forbidden_words", {"forbidden_words": ["slowly", "well"]}),
    ],
)
def test_each_edit_satisfies_its_checker(instruction: str, kwargs: dict):
    fields = {**meta((instruction, kwargs)), "topic": "growing plants"}
    assert VERIFIER.score([JudgeItem("p", ANSWER, fields)])[0].value == 0.0
    rewrite = rewrite_response(VERIFIER, "p", ANSWER, fields)
    assert rewrite is not None and rewrite.instructions == (instruction,)
    assert (rewrite.original.value, rewrite.score.value) == (0.0, 1.0)
    assert rewrite.source == f"rewrite:{REWRITES[instruction][0]}"
    assert VERIFIER.score([JudgeItem("p", rewrite.text, fields)])[0].value == 1.0


def test_edits_combine_and_keep_what_already_passed():
    fields = meta(
        ("change_case:english_capital", {}),
        ("punctuation:no_comma", {}),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}),
        ("keywords:existence", {"keywords": ["water"]}),
    )
    rewrite = rewrite_response(VERIFIER, "p", ANSWER, fields)
    assert rewrite is not None
    assert (
        rewrite.text
        == "PLANTS NEED WATER LIGHT AND SOIL. THEY GROW SLOWLY BUT THEY GROW WELL.\n\nP.S. I HOPE THIS HELPS."
    )
    assert rewrite.source == "rewrite:postscript+no_comma+english_capital"
    assert (rewrite.original.value, rewrite.score.value) == (0.25, 1.0)


def test_a_rewrite_that_breaks_another_check_is_dropped():
    # The postscript adds a sentence: the answer had 2 (fewer than 3 passes), the rewrite 3 (fails).
    fields = meta(
        ("detectable_content:postscript", {"postscript_marker": "P.S."}),
        ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}),
    )
    assert rewrite_response(VERIFIER, "p", ANSWER, fields) is None


def test_layout_edits_lay_out_the_sentences_cut_long_lists_and_drop_degenerate_list_lines():
    bullets = meta(("detectable_format:number_bullet_lists", {"num_bullets": 2}))
    rewrite = rewrite_response(VERIFIER, "p", ANSWER + " Some need shade!", bullets)
    assert rewrite is not None
    assert rewrite.text.split("\n") == [
        "* Plants need water, light and soil. They grow slowly, but they grow well.",
        "* Some need shade!",
    ]
    # Marker-only lines and dividers go; each item's own marker is replaced, a line without an end mark is a sentence.
    degenerate = "* * *\n* Water daily.\n* \n- Light, lots of it.\n* * *\nSoil matters too"
    rewrite = rewrite_response(VERIFIER, "p", degenerate, bullets)
    assert rewrite is not None and rewrite.text == "* Water daily. Light, lots of it.\n* Soil matters too"
    # A title line stays on top, out of the list.
    titled = meta(("detectable_format:number_bullet_lists", {"num_bullets": 2}), ("detectable_format:title", {}))
    rewrite = rewrite_response(VERIFIER, "p", "<<Plants>>\n\n" + ANSWER, titled)
    assert rewrite is not None and rewrite.text.split("\n") == [
        "<<Plants>>",
        "",
        "* Plants need water, light and soil.",
        "* They grow slowly, but they grow well.",
    ]
    # A list with too many items stops after the asked number; what follows the list stays, what lies between the
    # kept items and the last one goes (a second copy of the list under its own heading).
    listed = "<<Plants>>\n\n* Water daily.\n* Light, lots of it.\n\nAgain:\n\n* Soil.\n* Shade.\n\nP.S. Enjoy."
    rewrite = rewrite_response(VERIFIER, "p", listed, bullets)
    assert rewrite is not None and rewrite.text == "<<Plants>>\n\n* Water daily.\n* Light, lots of it.\n\nP.S. Enjoy."
    # Items that only echo the instructions' example go; too few items with content left: no edit.
    labelled = "* *First point*\n* Second point:\n* Water daily.\n* Light, lots of it.\n* Soil."
    rewrite = rewrite_response(VERIFIER, "p", labelled, bullets)
    assert rewrite is not None and rewrite.text == "* Water daily.\n* Light, lots of it."
    assert rewrite_response(VERIFIER, "p", "* *First point*\n* *Second point*\n* Water daily.", bullets) is None
    paragraphs = meta(("length_constraints:number_paragraphs", {"num_paragraphs": 3}))
    rewrite = rewrite_response(VERIFIER, "p", ANSWER + " Some need shade!", paragraphs)
    assert rewrite is not None and rewrite.text.split("\n\n***\n\n") == [
        "Plants need water, light and soil.",
        "They grow slowly, but they grow well.",
        "Some need shade!",
    ]


def test_an_edit_that_cannot_be_made_leaves_the_others():
    # Two sentences cannot make 3 bullets; the lowercase edit is still made and the pair still improves.
    fields = meta(("detectable_format:number_bullet_lists", {"num_bullets": 3}), ("change_case:english_lowercase", {}))
    rewrite = rewrite_response(VERIFIER, "p", ANSWER, fields)
    assert rewrite is not None and rewrite.text == ANSWER.lower()
    assert rewrite.source == "rewrite:english_lowercase"
    assert (rewrite.original.value, rewrite.score.value) == (0.0, 0.5)
    # Only a "less than" limit can be met by cutting, and a cut keeps at least one sentence.
    at_least = meta(("length_constraints:number_words", {"num_words": 50, "relation": "at least"}))
    assert rewrite_response(VERIFIER, "p", ANSWER, at_least) is None
    one_sentence = meta(("length_constraints:number_sentences", {"num_sentences": 1, "relation": "less than"}))
    assert rewrite_response(VERIFIER, "p", ANSWER, one_sentence) is None
    too_few_words = meta(("length_constraints:number_words", {"num_words": 3, "relation": "less than"}))
    assert rewrite_response(VERIFIER, "p", ANSWER, too_few_words) is None


def test_nothing_to_rewrite_gives_none():
    assert rewrite_response(VERIFIER, "p", ANSWER, meta(("keywords:existence", {"keywords": ["moon"]}))) is None
    assert rewrite_response(VERIFIER, "p", ANSWER.lower(), meta(("change_case:english_lowercase", {}))) is None
    assert rewrite_response(VERIFIER, "p", "   ", meta(("startend:quotation", {}))) is None
    assert rewrite_response(VERIFIER, "p", ANSWER, {}) is None
    assert rewrite_response(VERIFIER, "p", ANSWER + " And", {}, truncated=True) is None  # nothing to verify


def test_an_unfixable_part_still_gives_a_better_chosen():
    # Lowercase is fixed; the missing keyword is not, and fails on both sides.
    fields = meta(("change_case:english_lowercase", {}), ("keywords:existence", {"keywords": ["moon"]}))
    rewrite = rewrite_response(VERIFIER, "p", ANSWER, fields)
    assert rewrite is not None and (rewrite.original.value, rewrite.score.value) == (0.0, 0.5)


# --- pairs build with fixed answers in place of a model -------------------------------------------------------------

LOWERCASE = meta(("change_case:english_lowercase", {}), ("keywords:existence", {"keywords": ["water"]}))
# Sample j of prompt i: answers[i][j] (text, finish_reason).
ANSWERS = {
    "Prompt one.": [(ANSWER, "eos"), ("No liquid here, sorry.", "eos")],  # 0.5 vs 0.0: a pair; rewrite of sample 0
    "Prompt two.": [(ANSWER, "eos"), (ANSWER + " Yes.", "eos")],  # 0.5 vs 0.5: a tie; the rewrite still comes
    # A tie; both cut at the token limit: a rewrite of the first, trimmed back to its last sentence.
    "Prompt three.": [(ANSWER + " Roots", "length"), (ANSWER + " Roots and", "length")],
}


@pytest.fixture
def fixed_answers(monkeypatch: pytest.MonkeyPatch):
    def generate(model, tokenizer, prompts, config, *, progress=True):
        j = config.seed  # PairsConfig: sample j is drawn with seed + j, and the tests use seed 0
        return [Generation(ANSWERS[p][j][0], [1], ANSWERS[p][j][1], 3) for p in prompts]

    monkeypatch.setattr(prefalign.generate, "generate", generate)


def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": text, "topic": "plants", **LOWERCASE} for i, text in enumerate(ANSWERS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build(tmp_path: Path, **options) -> tuple[list[dict], list[dict], object]:
    config = PairsConfig(max_new_tokens=8, batch_size=2, **options)
    out = tmp_path / "pairs.jsonl"
    report = build_pairs(None, None, VERIFIER, read_prompt_records(prompts_file(tmp_path)), out, config, model_name="m")  # type: ignore[arg-type]  # generation is replaced: no model is needed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    skipped = [json.loads(line) for line in skipped_path(out).read_text().splitlines()]
    return lines, skipped, report


def test_rewrite_pairs_are_written_beside_judged_ones(tmp_path: Path, fixed_answers):
    lines, skipped, report = build(tmp_path, rewrite=True)
    # A batch's rewrite pairs come first.
    assert [(line["id"], line["source"]) for line in lines] == [
        ("p0", "rewrite:english_lowercase"),
        ("p1", "rewrite:english_lowercase"),
        ("p2", "rewrite:trim+english_lowercase"),
        ("p0", "judge"),
    ]
    assert [(line["id"], line["status"]) for line in skipped] == [("p1", "tie"), ("p2", "tie")]
    assert (report.pairs, report.rewrites, report.ties, report.done) == (1, 3, 2, 3)
    assert "rewrite pairs 3" in report.summary()
    rewrite = lines[0]
    assert (rewrite["chosen"], rewrite["rejected"]) == (ANSWER.lower(), ANSWER)
    assert (rewrite["chosen_score"], rewrite["rejected_score"]) == (1.0, 0.5)
    assert rewrite["chosen_sample"]["rewritten"] == ["change_case:english_lowercase"]
    assert rewrite["judge_details"]["chosen"]["instructions"][0]["strict"] is True
    trimmed = lines[2]
    assert (trimmed["chosen"], trimmed["rejected"]) == (ANSWER.lower(), ANSWER + " Roots")
    assert trimmed["rejected_sample"]["finish_reason"] == "length"
    assert len(load_preferences(tmp_path / "pairs.jsonl", strict=True)) == 4
    stats = pair_stats(tmp_path / "pairs.jsonl")
    assert stats["by_source"] == {"judge": 1, "rewrite:english_lowercase": 2, "rewrite:trim+english_lowercase": 1}
    assert stats["prompts"] == 3


def test_a_run_killed_mid_batch_resumes_to_the_same_files(tmp_path: Path, fixed_answers):
    first = build(tmp_path, rewrite=True)
    out = tmp_path / "pairs.jsonl"
    # Killed while writing the first batch's pairs: one line on disk, nothing in the skipped file yet.
    out.write_text(out.read_text().splitlines()[0] + "\n")
    skipped_path(out).write_text("")
    lines, skipped, report = build(tmp_path, rewrite=True)
    assert (lines, skipped) == first[:2]
    assert (report.pairs, report.rewrites, report.ties, report.resumed) == (1, 3, 2, 0)
    lines, skipped, report = build(tmp_path, rewrite=True)  # all done: nothing new
    assert (lines, skipped) == first[:2] and report.resumed == 3 and report.rewrites == 3
    with pytest.raises(PrefalignError, match="resume with the same settings"):
        build(tmp_path)  # without --rewrite: other settings


def test_without_rewrite_no_rewrite_pairs(tmp_path: Path, fixed_answers):
    lines, _, report = build(tmp_path)
    assert [line["source"] for line in lines] == ["judge"] and report.rewrites == 0


# --- contrast pairs: the same edits losing where the prompt did not ask for them ------------------------------------

KEYWORD_ONLY = meta(("keywords:existence", {"keywords": ["water"]}))


def contrast_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two prompts asking for lowercase (a rewrite pair each), one asking only for a keyword (the one donor), one asking
    for lowercase and capitals (no donor: it asks for the edit)."""
    monkeypatch.setitem(ANSWERS, "Prompt four.", [(ANSWER, "eos"), ("Water it.", "eos")])
    monkeypatch.setitem(ANSWERS, "Prompt five.", [(ANSWER, "eos"), ("Water it.", "eos")])
    both = meta(("change_case:english_lowercase", {}), ("change_case:english_capital", {}))
    rows = [
        {"id": "p0", "prompt": "Prompt one.", **LOWERCASE},
        {"id": "p1", "prompt": "Prompt two.", **LOWERCASE},
        {"id": "p3", "prompt": "Prompt four.", **KEYWORD_ONLY},
        {"id": "p4", "prompt": "Prompt five.", **both},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_contrast(tmp_path: Path, prompts: Path, **options) -> tuple[list[dict], object]:
    config = PairsConfig(max_new_tokens=8, batch_size=2, rewrite=True, **options)
    out = tmp_path / "pairs.jsonl"
    report = build_pairs(None, None, VERIFIER, read_prompt_records(prompts), out, config, model_name="m")  # type: ignore[arg-type]  # generation is replaced: no model is needed
    return [json.loads(line) for line in out.read_text().splitlines()], report


def test_contrast_pairs_show_an_unasked_edit_losing(tmp_path: Path, fixed_answers, monkeypatch: pytest.MonkeyPatch):
    prompts = contrast_prompts(tmp_path, monkeypatch)
    lines, report = build_contrast(tmp_path, prompts, contrast=True)
    contrasts = [line for line in lines if line["source"].startswith("contrast:")]
    # Two lowercase rewrites (none for p4: no edit follows both of its case rules), one prompt that does not ask for
    # lowercase: one contrast pair, from that prompt.
    assert [line["id"] for line in lines if line["source"].startswith("rewrite:")] == ["p0", "p1"]
    assert [(c["id"], c["source"]) for c in contrasts] == [("p3", "contrast:english_lowercase")]
    contrast = contrasts[0]
    assert (contrast["chosen"], contrast["rejected"]) == (ANSWER, ANSWER.lower())
    assert contrast["chosen_score"] == contrast["rejected_score"] == 1.0  # the verifier alone cannot tell them apart
    assert contrast["instruction_id_list"] == ["keywords:existence"] and contrast["model"] == "m"
    assert contrast["rejected_sample"]["edited"] == ["change_case:english_lowercase"]
    assert report.contrasts == 1 and "contrast pairs 1" in report.summary() and "1 contrast pairs" in report.progress()
    stats = pair_stats(tmp_path / "pairs.jsonl")
    assert stats["by_source"]["contrast:english_lowercase"] == 1 and stats["prompts"] == 4  # counted apart
    again, report = build_contrast(tmp_path, prompts, contrast=True)  # resumed: nothing new, the same file
    assert again == lines and report.contrasts == 1 and report.resumed == 4
    (tmp_path / "without").mkdir()
    without, _ = build_contrast(tmp_path / "without", prompts)
    assert [line for line in without if line["source"].startswith("contrast:")] == []

    def unsampled(line: dict) -> dict:  # the line without its sampling settings, which name --contrast
        return {key: value for key, value in line.items() if key != "generation"}

    assert [unsampled(line) for line in without] == [
        unsampled(line) for line in lines if not line["source"].startswith("contrast:")
    ]  # contrast pairs add lines and change none


def test_mirror_pairs_turn_a_contrast_pair_around_under_the_instruction(
    tmp_path: Path, fixed_answers, monkeypatch: pytest.MonkeyPatch
):
    from prefalign.prompts.instructions import INSTRUCTIONS

    prompts = contrast_prompts(tmp_path, monkeypatch)
    lines, report = build_contrast(tmp_path, prompts, contrast=True, mirror=True)
    (contrast,) = [line for line in lines if line["source"].startswith("contrast:")]
    (mirror,) = [line for line in lines if line["source"].startswith("mirror:")]
    assert (mirror["id"], mirror["source"]) == ("p3", "mirror:english_lowercase")
    # The contrast pair's answers the other way round, under its prompt with a train phrasing of the edit's rule.
    assert (
        (mirror["chosen"], mirror["rejected"]) == (contrast["rejected"], contrast["chosen"]) == (ANSWER.lower(), ANSWER)
    )
    kind = INSTRUCTIONS["change_case:english_lowercase"]
    assert mirror["prompt"] in ["Prompt four. " + kind.describe({}, p) for p in range(kind.train_phrasings)]
    assert "phrasings" not in mirror  # the prompt had no phrasing record to extend
    assert mirror["instruction_id_list"] == ["keywords:existence", "change_case:english_lowercase"]
    assert mirror["kwargs"] == [{"keywords": ["water"]}, {}]
    assert (mirror["chosen_score"], mirror["rejected_score"]) == (1.0, 0.5)  # now the verifier tells them apart
    assert mirror["chosen_sample"]["edited"] == ["change_case:english_lowercase"] and mirror["model"] == "m"
    assert report.mirrors == 1 and "mirror pairs 1" in report.summary() and "1 mirror pairs" in report.progress()
    assert pair_stats(tmp_path / "pairs.jsonl")["prompts"] == 4  # counted apart from the judged prompts
    again, report = build_contrast(tmp_path, prompts, contrast=True, mirror=True)  # resumed: the same file
    assert again == lines and report.mirrors == 1 and report.resumed == 4
    with pytest.raises(PrefalignError, match="--mirror needs --contrast"):
        PairsConfig(rewrite=True, mirror=True)
    assert mirror["generation"]["mirror"] is True and "mirror" not in contrast_without_mirrors(tmp_path, prompts)


def contrast_without_mirrors(tmp_path: Path, prompts: Path) -> dict:
    """The sampling settings a run without --mirror records: as before the option, so older files still resume."""
    (tmp_path / "plain").mkdir()
    lines, _ = build_contrast(tmp_path / "plain", prompts, contrast=True)
    return lines[0]["generation"]


def test_no_mirror_where_the_prompt_cannot_take_the_rule():
    from prefalign.pairs.lines import mirror_lines
    from prefalign.prompts.instructions import INSTRUCTIONS

    contrast = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        "chosen": "Hi there.",
        "rejected": "hi there.",
        "id": "q",
        "instruction_id_list": [],
        "kwargs": [],
        "source": "contrast:english_lowercase",
        "chosen_sample": {"index": 0},
        "rejected_sample": {"index": 0, "edited": ["change_case:english_lowercase"]},
    }
    (mirror,) = mirror_lines(VERIFIER, [contrast], seed=0)
    assert mirror["prompt"][0] == contrast["prompt"][0]  # chat messages: the rule joins the last user turn
    assert mirror["prompt"][1]["content"].startswith("Say hi. ") and contrast["prompt"][1]["content"] == "Say hi."
    (alone,) = mirror_lines(VERIFIER, [{**contrast, "prompt": [{"role": "system", "content": "Say hi."}]}], seed=0)
    assert alone["prompt"][0]["content"] == mirror["prompt"][1]["content"]  # no user turn: the last message
    assert mirror_lines(VERIFIER, [contrast], seed=0) == [mirror]  # the phrasing is drawn from the seed and the id
    built_in = {**contrast, "phrasings": []}  # a built-in prompt records its phrasings: the mirror's adds one
    (phrased,) = mirror_lines(VERIFIER, [built_in], seed=0)
    (p,) = phrased["phrasings"]
    kind = INSTRUCTIONS["change_case:english_lowercase"]
    assert phrased["prompt"][1]["content"] == "Say hi. " + kind.describe({}, p) and not kind.is_heldout_only(p)
    # A prompt whose end phrase is in mixed case cannot also ask for lowercase (the instructions conflict).
    ends = {**contrast, "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]}
    assert mirror_lines(VERIFIER, [ends], seed=0) == []
    # Nor is a mirror made where the edit does not win under the new prompt (here nothing changed).
    same = {**contrast, "rejected": "Hi there."}
    assert mirror_lines(VERIFIER, [same], seed=0) == []


def test_contrast_pairs_need_rewrites_and_whole_answer_edits():
    from prefalign.pairs.rewrite import apply_edits

    with pytest.raises(PrefalignError, match="--contrast needs --rewrite"):
        PairsConfig(contrast=True)
    # Edits apply in REWRITES' order whatever the order asked: commas, then case, then quotes.
    assert apply_edits("A, b.", ["startend:quotation", "change_case:english_capital", "punctuation:no_comma"]) == (
        '"A B."'
    )
    with pytest.raises(ValueError, match="not a whole-answer edit"):
        apply_edits(ANSWER, ["detectable_format:title"])


def test_min_score_gap_skips_and_counts_close_pairs(tmp_path: Path, fixed_answers):
    lines, skipped, report = build(tmp_path, min_score_gap=0.6)
    assert lines == [] and report.small_gaps == 1 and report.done == 3
    small = next(line for line in skipped if line["status"] == "small_gap")
    assert small["id"] == "p0" and [s["score"] for s in small["samples"]] == [0.5, 0.0]
    assert "score gaps below the minimum 1" in report.summary()
    assert pair_stats(tmp_path / "pairs.jsonl")["skipped"]["small_gap"] == 1
    (tmp_path / "pairs.jsonl").unlink()
    skipped_path(tmp_path / "pairs.jsonl").unlink()
    lines, _, report = build(tmp_path, min_score_gap=0.5)  # a gap of exactly the minimum is kept
    assert len(lines) == 1 and report.small_gaps == 0


def test_a_pair_whose_chosen_answer_loops_is_skipped_and_counted(
    tmp_path: Path, fixed_answers, monkeypatch: pytest.MonkeyPatch
):
    loop = " ".join(["Plants need water, light and soil."] * 5)  # keyword check passed (0.5); 78% repeated
    other = "The garden is green and the plants grow well in the sun."  # 0.0, lowercased 0.5
    monkeypatch.setitem(ANSWERS, "Prompt one.", [(loop, "eos"), (other, "eos")])
    (tmp_path / "unlimited").mkdir()
    lines, _, _ = build(tmp_path / "unlimited", rewrite=True)
    assert [line["chosen"] for line in lines if line["id"] == "p0"] == [loop.lower(), loop]  # rewrite, judged
    lines, skipped, report = build(tmp_path, rewrite=True, max_chosen_repetition=0.25)
    # The judged pair (the loop over the other answer) is skipped; the rewrite is of the answer that does not loop.
    assert [(line["source"], line["rejected"]) for line in lines if line["id"] == "p0"] == [
        ("rewrite:english_lowercase", other)
    ]
    assert next(line for line in skipped if line["id"] == "p0")["status"] == "repetitive"
    assert report.repetitive == 1 and report.done == 3 and "repetitive chosen answers 1" in report.summary()
    assert pair_stats(tmp_path / "pairs.jsonl")["skipped"]["repetitive"] == 1
    for bad in (0.0, 1.5):
        with pytest.raises(PrefalignError, match="--max-chosen-repetition must be in"):
            PairsConfig(max_chosen_repetition=bad)


def test_min_score_gap_must_be_a_non_negative_number():
    for bad in (-0.1, float("nan")):
        with pytest.raises(PrefalignError, match="--min-score-gap must be a number of at least 0"):
            PairsConfig(min_score_gap=bad)


# --- the demo: SFT targets from rewrites, the options, the report ----------------------------------------------------


def test_sft_rewrites_keep_a_target_for_prompts_no_sample_passed(monkeypatch: pytest.MonkeyPatch):
    import prefalign.pipeline.sft_data as sft_data

    answers = {"a": [ANSWER, ANSWER.lower()], "b": [ANSWER, "Nothing liquid."], "c": ["No liquid.", "Dry."]}

    def generate(model, tokenizer, prompts, config, *, progress=True):
        return [Generation(answers[p][config.seed], [1], "eos", 3) for p in prompts]

    monkeypatch.setattr(sft_data, "generate", generate)
    prompts = [{"id": p, "prompt": p, **LOWERCASE} for p in answers]
    setting = prefalign.generate.GenerationConfig(seed=0)
    for rewrite, expected in ((False, ["a"]), (True, ["a", "b"])):
        kept, report = sft_data.rejection_sample(
            None, None, prompts, VERIFIER, samples=2, generation=setting, rewrite=rewrite
        )
        assert [row["id"] for row in kept] == expected
        assert (report.kept, report.rewritten, report.passed) == (len(expected), len(expected) - 1, 1)
    assert kept[0] == {"id": "a", "prompt": "a", "completion": ANSWER.lower(), "sample": 1}
    assert kept[1] == {
        "id": "b",
        "prompt": "b",
        "completion": ANSWER.lower(),
        "sample": 0,
        "source": "rewrite:english_lowercase",
    }
    assert report.to_json()["rewritten"] == 1


def test_sft_targets_that_loop_are_not_kept(monkeypatch: pytest.MonkeyPatch):
    import prefalign.pipeline.sft_data as sft_data

    loop = " ".join(["plants need water, light and soil."] * 5)  # passes both checks
    answers = {"a": [loop, ANSWER.lower()], "b": [loop, loop.upper()]}

    def generate(model, tokenizer, prompts, config, *, progress=True):
        return [Generation(answers[p][config.seed], [1], "eos", 3) for p in prompts]

    monkeypatch.setattr(sft_data, "generate", generate)
    prompts = [{"id": p, "prompt": p, **LOWERCASE} for p in answers]
    setting = prefalign.generate.GenerationConfig(seed=0)
    kept, report = sft_data.rejection_sample(None, None, prompts, VERIFIER, samples=2, generation=setting)  # type: ignore[arg-type]  # generation is replaced: no model is needed
    assert [(row["id"], row["completion"]) for row in kept] == [("a", loop), ("b", loop)]  # no limit: loops are kept
    kept, report = sft_data.rejection_sample(
        None,
        None,
        prompts,
        VERIFIER,
        samples=2,
        generation=setting,
        rewrite=True,
        max_repetition=0.25,  # type: ignore[arg-type]  # generation is replaced: no model is needed
    )
    # "a" keeps its other sample; "b" has nothing else (its rewrite, lowercased, loops as well).
    assert [(row["id"], row["completion"], row["sample"]) for row in kept] == [("a", ANSWER.lower(), 1)]
    assert (report.repetitive, report.passed, report.kept) == (2, 1, 1)
    assert report.to_json()["repetitive"] == 2


def test_demo_options_reach_pair_building():
    from prefalign.pipeline.config import DemoConfig

    assert (DemoConfig().rewrite_pairs, DemoConfig().min_score_gap, DemoConfig().sft_rewrites) == (True, 0.0, True)
    assert DemoConfig().pairs_sampling().rewrite and DemoConfig().pairs_sampling().contrast
    assert not DemoConfig(contrast_pairs=False).pairs_sampling().contrast
    assert not DemoConfig(rewrite_pairs=False).pairs_sampling().contrast  # contrast pairs answer rewrite pairs
    assert DemoConfig().pairs_sampling().max_chosen_repetition == DemoConfig().max_repetition == 0.25
    assert DemoConfig(max_repetition=1.0).pairs_sampling().max_chosen_repetition == 1.0
    with pytest.raises(PrefalignError, match="--max-repetition must be in"):
        DemoConfig(max_repetition=0.0)
    sampling = DemoConfig(rewrite_pairs=False, min_score_gap=0.5, pair_samples=4).pairs_sampling()
    assert (sampling.rewrite, sampling.min_score_gap, sampling.num_samples) == (False, 0.5, 4)
    with pytest.raises(PrefalignError, match="--min-score-gap must be a number of at least 0"):
        DemoConfig(min_score_gap=-1.0)


def test_the_demo_report_counts_rewrite_pairs(tmp_path: Path):
    from prefalign.pipeline.report import _stage_facts

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    line = {"prompt": "p", "chosen": "a", "rejected": "b"}
    lines = {"train": ["judge", "rewrite:quotation", "rewrite:title", "contrast:quotation"], "heldout": ["judge"]}
    for name, sources in lines.items():
        (pairs / f"{name}.jsonl").write_text("".join(json.dumps({**line, "source": s}) + "\n" for s in sources))
    summary = {
        "source": "built",
        "config": {"rewrite": True},
        "prompts": 4,
        "ties": 1,
        "judge_failures": 0,
        "small_gaps": 1,
        "repetitive": 2,
        "rewrites": 3,
        "contrasts": 1,
        "pairs": 6,
        "train_pairs": 4,
        "heldout_pairs": 1,
        "heldout_rewrites": 1,
    }
    (pairs / "summary.json").write_text(json.dumps(summary))
    assert _stage_facts(tmp_path)["pairs"] == (
        "from 4 prompts: 1 ties and 0 judge failures, 1 below the minimum score gap, 2 whose chosen answer repeats too "
        "much skipped; 6 pairs, 4 train / 1 held out; 3 of the pairs are rewrites of a sample to follow the "
        "instructions it failed (2 trained on) and 1 contrast pairs (a sample as it was over the same sample with a "
        "case, quote or comma edit its prompt did not ask for; 1 trained on by DPO, none by the reward model); the 1 "
        "of these of held-out prompts are "
        "set aside, so held-out pairs are judged samples only; the rest are judged samples"
    )
    with (pairs / "train.jsonl").open("a") as train:
        train.write(json.dumps({**line, "source": "mirror:quotation"}) + "\n")
    (pairs / "summary.json").write_text(json.dumps({**summary, "mirrors": 2}))
    assert (
        "none by the reward model) and 2 mirror pairs (a contrast pair the other way round, under its prompt "
        in (_stage_facts(tmp_path)["pairs"])
    )
    assert "with the edit's instruction added; 1 trained on); the 1 of these" in _stage_facts(tmp_path)["pairs"]
    del summary["contrasts"]
    (pairs / "summary.json").write_text(json.dumps(summary))
    assert "contrast" not in _stage_facts(tmp_path)["pairs"]


def test_the_demo_report_counts_trimmed_sft_targets(tmp_path: Path):
    from prefalign.pipeline.report import _stage_facts

    (tmp_path / "sft_data").mkdir()
    sampling = {"prompts": 4, "samples": 8, "truncated": 3, "passed": 1, "kept": 3, "rewritten": 2, "trimmed": 1}
    (tmp_path / "sft_data" / "sampling.json").write_text(json.dumps(sampling))
    assert _stage_facts(tmp_path)["sft_data"] == (
        "3 of 4 prompts kept (2 of them rewrites of failing samples, 1 trimmed back to a complete sentence): 1 of 8 "
        "samples passed every instruction check, 3 were cut at the token limit"
    )


def test_pairs_are_split_by_prompt_and_held_out_rewrites_are_set_aside(tmp_path: Path):
    from prefalign.pipeline.data_stages import split_pairs

    rows = [
        {"id": f"p{i}", "prompt": f"prompt {i}", "chosen": f"c{i}{source}", "rejected": "r", "source": source}
        for i in range(20)
        for source in ("judge", "rewrite:quotation", "contrast:no_comma", "mirror:no_comma")
    ]
    built = tmp_path / "pairs.jsonl"
    built.write_text("".join(json.dumps(row) + "\n" for row in rows))
    counts = split_pairs(built, tmp_path, 0.25, seed=0)
    read = {
        name: [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "reward_train", "heldout", "heldout_rewrites")
    }
    held_ids = {row["id"] for row in read["heldout"]}
    assert len(held_ids) == 5 and all(row["source"] == "judge" for row in read["heldout"])
    assert sorted(row["id"] for row in read["heldout_rewrites"]) == sorted([*held_ids, *held_ids, *held_ids])
    assert not held_ids & {row["id"] for row in read["train"]}  # no held-out prompt is trained on
    # The reward model learns the judge's preferences: a mirror pair's sides the judge tells apart, a contrast's not.
    assert read["reward_train"] == [row for row in read["train"] if not row["source"].startswith("contrast:")]
    assert counts == {
        "pairs": 80,
        "train_pairs": 60,
        "reward_train_pairs": 45,
        "heldout_pairs": 5,
        "heldout_rewrites": 15,
    }
    assert split_pairs(built, tmp_path, 0.25, seed=0) == counts  # seeded


# --- answers cut at the token limit: trimmed back to a complete sentence first ---------------------------------------

CUT = "Plants need water, light and soil. They grow slowly, but they grow"


def test_trim_keeps_complete_sentences_and_lines():
    assert trim_to_boundary(CUT) == "Plants need water, light and soil."
    assert trim_to_boundary('He said "stop right there." Then he left and') == 'He said "stop right there."'
    assert trim_to_boundary("1. water\n2. light\n3. so") == "1. water\n2. light"
    assert trim_to_boundary("One. " + "x" * 40) is None  # the cut would drop most of the answer
    assert trim_to_boundary("no boundary at all") is None


def test_a_cut_answer_is_trimmed_then_edited():
    fields = meta(("startend:end_checker", {"end_phrase": "Any other questions?"}))
    rewrite = rewrite_response(VERIFIER, "p", CUT, fields, truncated=True)
    assert rewrite is not None and rewrite.trimmed
    assert rewrite.text == "Plants need water, light and soil.\n\nAny other questions?"
    assert rewrite.source == "rewrite:trim+end_checker"
    # The trim alone is an edit: a cut answer whose trimmed version passes needs no other.
    alone = rewrite_response(VERIFIER, "p", CUT, meta(("keywords:existence", {"keywords": ["soil"]})), truncated=True)
    assert alone is not None and (alone.text, alone.source, alone.instructions) == (
        "Plants need water, light and soil.",
        "rewrite:trim",
        (),
    )
    # Not asked to trim, the same answer has nothing to rewrite; a trim that loses a passed check is dropped.
    assert rewrite_response(VERIFIER, "p", CUT, meta(("keywords:existence", {"keywords": ["soil"]}))) is None
    grow = meta(("keywords:existence", {"keywords": ["grow"]}))
    assert rewrite_response(VERIFIER, "p", CUT, grow, truncated=True) is None


def test_sft_targets_prefer_finished_samples_then_trimmed_ones(monkeypatch: pytest.MonkeyPatch):
    from prefalign.pipeline import sft_data

    end = meta(("startend:end_checker", {"end_phrase": "Any other questions?"}))
    answers = {
        "cut only": [(CUT, "length"), (CUT + " well", "length")],  # only a trimmed rewrite
        "both": [(CUT, "length"), (ANSWER, "eos")],  # the finished sample's rewrite wins
        "passes": [(ANSWER + "\n\nAny other questions?", "eos"), (CUT, "length")],  # kept as sampled
    }

    def generate(model, tokenizer, prompts, config, *, progress=True):
        return [Generation(answers[p][config.seed][0], [1], answers[p][config.seed][1], 3) for p in prompts]

    monkeypatch.setattr(sft_data, "generate", generate)
    prompts = [{"id": name, "prompt": name, **end} for name in answers]
    config = prefalign.generate.GenerationConfig(max_new_tokens=8, seed=0)
    kept, report = sft_data.rejection_sample(None, None, prompts, VERIFIER, samples=2, generation=config, rewrite=True)  # type: ignore[arg-type]  # generation is replaced: no model is needed
    assert [(row["id"], row.get("source"), row["sample"]) for row in kept] == [
        ("cut only", "rewrite:trim+end_checker", 0),
        ("both", "rewrite:end_checker", 1),
        ("passes", None, 0),
    ]
    assert kept[0]["completion"] == "Plants need water, light and soil.\n\nAny other questions?"
    assert (report.truncated, report.passed, report.rewritten, report.trimmed, report.kept) == (4, 1, 2, 1, 3)
    # Without rewrites a cut answer is never a target.
    kept, report = sft_data.rejection_sample(None, None, prompts, VERIFIER, samples=2, generation=config)  # type: ignore[arg-type]  # generation is replaced: no model is needed
    assert [row["id"] for row in kept] == ["passes"] and report.trimmed == 0


def test_forbidden_words_are_deleted_or_replaced_in_place():
    edit = REWRITES["keywords:forbidden_words"][1]
    forbidden = {"forbidden_words": ["also", "very", "just", "great", "really"]}
    text = "Also, the water is very cold. It is just great, really.\nJust look."
    assert edit(text, forbidden, {}) == "The water is cold. It is wonderful.\nLook."
    assert edit("A good idea. GOOD!", {"forbidden_words": ["good"]}, {}) == "A nice idea. NICE!"
    fields = meta(
        ("keywords:forbidden_words", forbidden),
        ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}),
    )
    rewrite = rewrite_response(VERIFIER, "p", text, fields)
    assert rewrite is not None and rewrite.source == "rewrite:forbidden_words"
    assert (rewrite.original.value, rewrite.score.value) == (0.5, 1.0)
