"""`prefalign eval` end to end on tiny models: the report files, intervals everywhere, caching, escaping, Chromium.

Three "fine-tuned" variants of the tiny model (its weights redrawn with different seeds, so their answers differ) are
evaluated on six prompts with the real verifier and an LLM judge served over real HTTP by the fake server.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers.fake_llm_server import FakeLLMServer, Reply
from prefalign.cli import eval as eval_cli
from prefalign.errors import PrefalignError
from prefalign.evaluate.config import EvalConfig
from prefalign.evaluate.report_html import render_html
from prefalign.evaluate.run import run_evaluation
from prefalign.generate import Generation, GenerationConfig
from prefalign.judges.options import JudgeOptions
from prefalign.prompts import builtin_prompts

LABELS = ["base", "sft", "dpo"]
PAYLOAD = '<script>alert(1)</script><img src=x onerror="console.log(\'injected\')"> & "quotes" </pre>'
CELL = re.compile(r"^[+-]?\d+\.\d+ \[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]$")


def _lively_model(tiny_model_dir: Path, path: Path, seed: int) -> Path:
    """The tiny model with weights redrawn 10x larger: at its 0.02 init every prompt gets the same empty answer."""
    from prefalign.models.loading import load_model, load_tokenizer

    model = load_model(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2, generator=generator)
    model.save_pretrained(path)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    return path


def _judge_answer(prompt: str) -> Reply:
    """An unbiased fake LLM judge: prefers the longer answer (in either position); rates 1 + length mod 5."""
    if "<assistant_a>" in prompt:
        a = re.search(r"<assistant_a>\n(.*)\n</assistant_a>", prompt, re.S).group(1)
        b = re.search(r"<assistant_b>\n(.*)\n</assistant_b>", prompt, re.S).group(1)
        return Reply(text="[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]")
    answer = re.search(r"<response>\n(.*)\n</response>", prompt, re.S).group(1)
    return Reply(text=f"Fine. Rating: [[{1 + len(answer) % 5}]]")


def _cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="prefalign")
    eval_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = args.func(args)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def workspace(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("eval")
    models = {label: _lively_model(tiny_model_dir, root / label, seed) for seed, label in enumerate(LABELS)}
    prompts = root / "prompts.jsonl"
    records = [*builtin_prompts(split="heldout")[:5], {"id": "chat", "prompt": [{"role": "user", "content": "Hi"}]}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs = root / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
                {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away."},
                {"prompt": "Name a colour.", "chosen": "blue", "rejected": "the number seven"},
            ]
        )
    )
    run_dir = root / "runs" / "dpo"
    run_dir.mkdir(parents=True)
    run_dir.joinpath("metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "split": split, "loss": 0.7 - 0.01 * s, "rewards/margins": 0.02 * s}) + "\n"
            for s in range(1, 21)
            for split in (["train", "eval"] if s % 5 == 0 else ["train"])
        )
    )
    with pytest.MonkeyPatch.context() as patch, FakeLLMServer(api_key="sk-test") as server:
        patch.setenv("OPENAI_API_KEY", "sk-test")
        server.answer_with(_judge_answer)
        out = root / "out"
        argv = [
            "eval",
            *(f"--model={label}={path}" for label, path in models.items()),
            "--prompts",
            str(prompts),
            "--pairs",
            str(pairs),
            "--run",
            f"dpo={run_dir}",
            "--judge",
            "verifier",
            "--judge",
            "openai:judge",
            "--judge-base-url",
            server.base_url + "/v1",
            "--judge-cache",
            str(root / "judge.sqlite"),
            "--output-dir",
            str(out),
            "--max-new-tokens",
            "12",
            "--batch-size",
            "8",
            "--kl-samples",
            "1",
            "--kl-max-new-tokens",
            "6",
        ]
        code, printed = _cli(argv)
        # Later runs write elsewhere but share the first run's cache.
        config = EvalConfig(
            models=list(models.items()),
            prompts=str(prompts),
            output_dir=root / "rerun",
            pairs=str(pairs),
            cache_dir=out / "cache",
            generation=GenerationConfig(max_new_tokens=12, batch_size=8),
            judges=["verifier", "openai:judge"],
            judge=JudgeOptions(judge_base_url=server.base_url + "/v1", judge_cache=str(root / "judge.sqlite")),
            runs={"dpo": str(run_dir)},
            kl_samples=1,
            kl_max_new_tokens=6,
        )
        rerun = run_evaluation(config, progress=False, say=lambda message: None)
        requests_before_extension = len(server.requests)
        extra = _lively_model(tiny_model_dir, root / "dpo2", seed=7)
        extended_config = replace(
            config, models=[*models.items(), ("dpo2", str(extra))], runs={}, output_dir=root / "extended"
        )
        extended = run_evaluation(extended_config, progress=False, say=lambda message: None)
        yield {
            "root": root,
            "out": out,
            "code": code,
            "printed": printed,
            "rerun": rerun,
            "extended": extended,
            "requests_before_extension": requests_before_extension,
            "server": server,
            "config": config,
        }


def _markdown_table(text: str) -> list[list[str]]:
    """The main table's rows (header first) as lists of cell texts."""
    lines = ("| Metric |" + text.split("| Metric |", 1)[1]).split("\n\n", 1)[0].splitlines()
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in [lines[0], *lines[2:]]]


def test_report_files_and_the_printed_table(workspace):
    out = workspace["out"]
    assert workspace["code"] == 0
    for name in ("report.md", "report.csv", "report.json", "report.html", "responses.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "| Metric | base | sft | dpo | Δ dpo over sft (95% CI) |" in workspace["printed"]
    assert "report.html" in workspace["printed"]
    assert len((out / "responses.jsonl").read_text().splitlines()) == 6
    # The IFEval figure only where some IFEval accuracy differs between the models (the tiny ones may all score 0).
    report = json.loads((out / "report.json").read_text())
    ifeval = [row for row in report["table"]["rows"] if row["key"].startswith("ifeval/")]
    differs = any(len({cell["value"] for cell in row["cells"].values() if cell}) > 1 for row in ifeval)
    expected = {"win_rates.png", "metrics.png", *(["ifeval.png"] if differs else [])}
    assert {p.name for p in (out / "plots").glob("*.png")} == expected
    assert (out / "plots" / "training" / "dpo" / "loss.png").is_file()


def test_every_number_in_the_table_has_its_interval(workspace):
    table = _markdown_table((workspace["out"] / "report.md").read_text())
    header, rows = table[0], table[1:]
    assert header[-1] == "Δ dpo over sft (95% CI)" and len(rows) >= 15
    names = [row[0] for row in rows]
    for expected in (
        "IFEval prompt-level accuracy (strict)",
        "IFEval instruction-level accuracy (loose)",
        "Judge score: openai:judge",
        "Response length (tokens)",
        "Refusal rate (phrase list)",
        "Repeated 4-grams (fraction)",
        "KL from base (nats/response, sampled)",
        "Implicit-reward accuracy, held-out pairs (ref sft)",
        "Win rate vs sft (verifier)",
        "LC win rate vs sft (openai:judge)",
        "Win rate vs base (openai:judge)",
    ):
        assert expected in names, expected
    numbers = 0
    for row in rows:
        assert len(row) == len(header), row
        for cell in row[1:]:
            assert cell == "–" or CELL.match(cell), f"{row[0]}: {cell!r} has no interval"
            numbers += cell != "–"
    assert numbers > 40
    with open(workspace["out"] / "report.csv", newline="") as handle:
        for record in csv.DictReader(handle):
            for label in [*LABELS, "delta"]:
                if record[label] != "":
                    low, value, high = (float(record[key]) for key in (f"{label}_low", label, f"{label}_high"))
                    assert low - 1e-9 <= value <= high + 1e-9


def test_report_json_holds_every_result(workspace):
    report = json.loads((workspace["out"] / "report.json").read_text())
    assert report["labels"] == LABELS and report["prompts"] == 6
    assert [(p["model"], p["baseline"], p["judge"]) for p in report["pairwise"]] == [
        ("dpo", "sft", "verifier"),
        ("dpo", "sft", "openai:judge"),
        ("sft", "base", "verifier"),
        ("sft", "base", "openai:judge"),
    ]
    for result in report["pairwise"]:
        # The verifier cannot score the chat prompt (no instructions); the LLM judge scores all six.
        assert result["failures"] == (1 if result["judge"] == "verifier" else 0)
        assert result["wins"] + result["ties"] + result["losses"] == 6 - result["failures"]
    assert set(report["kl"]) == {"sft", "dpo"} and all(v["mean_kl"] > 0 for v in report["kl"].values())
    scorers = [s["scorer"] for s in report["heldout"]["scorers"]]
    assert scorers == ["dpo implicit reward (ref sft, beta 0.1)", "openai:judge"]
    assert any("verifier could not score any held-out pair" in note for note in report["notes"])
    assert report["judge_stats"]["openai:judge"]["failures"] == 0
    assert {d["model"] for d in report["deltas"]} == {"dpo", "sft"}
    assert report["settings"]["confidence"] == {"level": 0.95, "bootstrap_resamples": 2000, "bootstrap_seed": 0}


def test_the_other_baseline_pairs_get_their_own_delta_table(workspace):
    text = (workspace["out"] / "report.md").read_text()
    section = text.split("## The other comparisons", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    assert header[:2] == ["Δ", "IFEval prompt-level accuracy (strict)"]
    assert "KL from base (nats/response, sampled)" not in header  # the base has no KL from itself: no column
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]
    assert [row[0] for row in rows] == ["sft over base"]  # dpo over sft is the main table's column
    report = json.loads((workspace["out"] / "report.json").read_text())
    for name, cell in zip(header[1:], rows[0][1:], strict=True):
        (delta,) = [d for d in report["deltas"] if (d["model"], d["baseline"], d["name"]) == ("sft", "base", name)]
        assert CELL.match(cell), cell
        digits = len(cell.split()[0].split(".")[1])
        assert abs(float(cell.split()[0]) - delta["value"]) <= 0.5 * 10**-digits, name
    # ...and the closing paragraph says, for that pair, what its intervals tell apart and what they cannot.
    closing = text.split("## What changed", 1)[1]
    assert "The other comparisons (95% intervals;" in closing
    assert "sft over base: told apart: " in closing and "not told apart: IFEval prompt-level accuracy" in closing


def test_unseen_phrasings_have_their_own_row(workspace):
    # Four of the five built-in held-out prompts are worded in held-out-only phrasings; the chat prompt has none.
    report = json.loads((workspace["out"] / "report.json").read_text())
    keys = [row["key"] for row in report["table"]["rows"]]
    assert keys[:2] == ["ifeval/prompt_strict", "ifeval/prompt_strict_unseen"]
    row = report["table"]["rows"][1]
    assert row["name"] == "IFEval prompt-level accuracy (strict), unseen phrasings"
    assert {label: cell["n"] for label, cell in row["cells"].items()} == dict.fromkeys(LABELS, 4)
    assert row["delta"] is not None and any(d["metric"] == row["key"] for d in report["deltas"])
    markdown = (workspace["out"] / "report.md").read_text()
    assert "Unseen phrasings: the 4 prompts" in markdown and "unseen phrasings" in markdown.split("## What changed")[1]


def test_a_cached_rerun_loads_no_model_and_asks_the_judge_nothing_new(workspace):
    rerun = workspace["rerun"]
    # The greedy answers come from the cache; the KL and the pair log-probs too, so no sample is even read.
    assert rerun.generation_counts == {label: {"generated": 0, "cached": 6} for label in LABELS}
    assert [model["loads"] for model in rerun.models.values()] == [0, 0, 0]
    assert rerun.judge_stats["openai:judge"]["requests"] == 0  # every judgment came from the judge cache
    first = json.loads((workspace["out"] / "report.json").read_text())
    assert [row.to_json() for row in rerun.rows] == first["table"]["rows"]


def test_adding_a_model_generates_for_that_model_only(workspace):
    extended = workspace["extended"]
    assert extended.labels == [*LABELS, "dpo2"]
    counts = extended.generation_counts
    # 6 greedy answers; its KL samples are drawn with the base alongside and kept only as the KL result
    assert counts["dpo2"] == {"generated": 6, "cached": 0}
    assert all(counts[label]["generated"] == 0 for label in LABELS)
    assert [extended.models[label]["loads"] for label in extended.labels] == [1, 0, 0, 1]  # base: for dpo2's KL
    assert extended.delta_pair == ("dpo2", "dpo")
    assert "dpo2" in extended.kl and "dpo2 implicit reward (ref dpo, beta 0.1)" in [h.scorer for h in extended.heldout]


def _kl_config(workspace, output_dir: Path, cache_dir: Path, kl_prompts: int) -> EvalConfig:
    """The workspace's models and prompts, verifier only, KL samples of 6 tokens on the first `kl_prompts` prompts."""
    full = workspace["rerun"]
    return EvalConfig(
        models=[(label, full.models[label]["spec"]) for label in LABELS],
        prompts=full.settings["prompts"],
        output_dir=output_dir,
        cache_dir=cache_dir,
        generation=GenerationConfig(max_new_tokens=12, batch_size=8),
        judges=["verifier"],
        kl_samples=1,
        kl_max_new_tokens=6,
        kl_prompts=kl_prompts,
    )


def test_the_kl_on_the_first_prompts_only(workspace):
    """--kl-prompts 2: each model's KL samples cover the first 2 prompts, drawn exactly as in the full run (each prompt
    keeps its own random stream), and the row and the note say how many prompts it covers."""
    full = workspace["rerun"]
    config = _kl_config(workspace, workspace["root"] / "kl-two", workspace["out"] / "cache", kl_prompts=2)
    two = run_evaluation(config, progress=False, say=lambda message: None)
    for label in ("sft", "dpo"):
        assert two.kl[label].kl == pytest.approx(full.kl[label].kl[:2], abs=1e-5)
    row = next(row for row in two.rows if row.metric.key == "kl")
    assert row.cells["dpo"].value == pytest.approx(sum(full.kl["dpo"].kl[:2]) / 2, abs=1e-5)
    assert two.settings["kl"]["prompts"] == 2
    assert "averaged per prompt, on the first 2 prompts." in (workspace["root"] / "kl-two" / "report.md").read_text()
    with pytest.raises(PrefalignError, match="--kl-prompts must be at least 1"):
        replace(config, kl_prompts=0)


def test_the_kl_samples_take_their_prompt_prefills_from_the_greedy_passes(workspace, monkeypatch):
    """A fresh evaluation (nothing cached) keeps each model's prefills of the KL prompts from its greedy pass and the
    base's from the base's, so no KL prompt is prefilled again; the KL is the one computed with nothing kept."""
    import prefalign.evaluate.passes as passes
    from prefalign.generate import PromptPrefills

    kept: list[PromptPrefills] = []

    class Recorded(PromptPrefills):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            kept.append(self)

    class KeepsNothing(PromptPrefills):
        def save(self, *args, **kwargs) -> None:
            return None

    config = _kl_config(workspace, workspace["root"] / "kl-kept", workspace["root"] / "kl-kept-cache", kl_prompts=3)
    monkeypatch.setattr(passes, "PromptPrefills", Recorded)
    reused = run_evaluation(config, progress=False, say=lambda message: None)
    base, sft, dpo = kept  # created in this order: the base's first, then one per model with a KL to compute
    assert [len(k.entries) for k in kept] == [3, 3, 3]
    assert (base.reused, sft.reused, dpo.reused) == (6, 3, 3)  # the base's serve both models' KL passes
    monkeypatch.setattr(passes, "PromptPrefills", KeepsNothing)
    afresh = run_evaluation(
        replace(config, output_dir=workspace["root"] / "kl-afresh", cache_dir=workspace["root"] / "kl-afresh-cache"),
        progress=False,
        say=lambda message: None,
    )
    for label in ("sft", "dpo"):
        assert reused.kl[label].kl == pytest.approx(afresh.kl[label].kl, abs=1e-5)
        assert reused.generations[label] == afresh.generations[label]


@pytest.fixture(scope="module")
def escaped_page(workspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report page with one response replaced by markup that would run if it were not escaped."""
    report = workspace["rerun"]
    original = report.generations["dpo"][0]
    report.generations["dpo"][0] = Generation(PAYLOAD, original.token_ids, "eos", original.num_tokens)
    try:
        directory = tmp_path_factory.mktemp("escaped")
        page = directory / "report.html"
        page.write_text(render_html(report, directory / "plots"), encoding="utf-8")
    finally:
        report.generations["dpo"][0] = original
    return page


def test_model_text_is_escaped_in_the_html(escaped_page: Path):
    page = escaped_page.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;console.log(&#x27;injected&#x27;)" in page
    assert page.count("<script>") == 1  # the page's own filter script, which embeds no data


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    browser = _chromium()
    assert browser is not None
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_renders_the_page_without_console_errors(escaped_page: Path, tmp_path: Path):
    page = escaped_page
    screenshot = tmp_path / "report.png"
    shot = _run_chromium(page, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,2000")
    # Chromium logs every console message (errors, uncaught exceptions, failed loads) as a CONSOLE line; the page
    # itself logs nothing, so any such line is a problem (an injected handler would log "injected").
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 200  # text, tables and figures, not a blank page
    dom = _run_chromium(page, tmp_path / "profile2", "--dump-dom").stdout
    assert "6 of 6 prompts" in dom  # the filter script ran
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>alert(1)" not in dom


def test_bad_options_fail_with_one_line_before_any_model_loads(tmp_path: Path):
    with pytest.raises(PrefalignError, match="expects LABEL=VALUE"):
        _cli(["eval", "--model", "nolabel", "--prompts", "p.jsonl", "-o", str(tmp_path)])
    with pytest.raises(PrefalignError, match="no model is labelled 'sft'"):
        EvalConfig(models=[("base", "x"), ("dpo", "y")], prompts="p", output_dir=tmp_path, baselines=[("dpo", "sft")])
    with pytest.raises(PrefalignError, match="used twice"):
        EvalConfig(models=[("a", "x"), ("a", "y")], prompts="p", output_dir=tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "instruction_id_list": ["no:such_rule"], "kwargs": [{}]}) + "\n")
    with pytest.raises(PrefalignError, match="prompt #1: unknown instruction id 'no:such_rule'"):
        run_evaluation(EvalConfig(models=[("a", "missing-model-dir/")], prompts=str(bad), output_dir=tmp_path))


def test_default_baselines_reference_and_implicit_reward_models(tmp_path: Path):
    models = [("base", "a"), ("sft", "b"), ("dpo", "c")]
    config = EvalConfig(models=models, prompts="p", output_dir=tmp_path, pairs="pairs.jsonl")
    assert config.baseline_pairs == [("dpo", "sft"), ("sft", "base")]
    assert (config.base_label, config.reference_label, config.implicit_reward_labels) == ("base", "sft", ["dpo"])
    custom = replace(config, baselines=[("dpo", "base")], reference="base")
    assert custom.baseline_pairs == [("dpo", "base")] and custom.implicit_reward_labels == ["sft", "dpo"]
    with pytest.raises(PrefalignError, match="--pairs needs a reference"):
        EvalConfig(models=[("only", "a")], prompts="p", output_dir=tmp_path, pairs="pairs.jsonl")
    judges_only = EvalConfig(models=models, prompts="p", output_dir=tmp_path, pairs="p.jsonl", implicit_reward=False)
    assert judges_only.implicit_reward_labels == []
    EvalConfig(models=[("only", "a")], prompts="p", output_dir=tmp_path, pairs="pairs.jsonl", implicit_reward=False)


def test_no_implicit_reward_scores_the_held_out_pairs_with_the_judges_alone(workspace):
    out = workspace["root"] / "judges-only"
    config = replace(workspace["config"], implicit_reward=False, output_dir=out)
    report = run_evaluation(config, progress=False, say=lambda message: None)
    assert [h.scorer for h in report.heldout] == ["openai:judge"]
    assert not any(key.startswith("pair_logps/") for key in report.timings)  # no model ran over the pairs
    assert "no implicit reward on the held-out pairs: --no-implicit-reward" in report.notes
    markdown = (out / "report.md").read_text()
    assert "No implicit reward was computed" in markdown and "Implicit-reward accuracy" not in markdown
    assert "No implicit reward was computed" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["heldout"]["reference"] is None


# Measured in the page after layout: an element wider than its section (a figure, a long name in a table cell) that
# no scrolling box holds, or a page wider than the window.
_OVERFLOW_PROBE = """<script>
const problems = [];
if (document.documentElement.scrollWidth > window.innerWidth + 1) problems.push("page is wider than the window");
for (const section of document.querySelectorAll("section")) {
  const box = section.getBoundingClientRect();
  for (const element of section.querySelectorAll("*")) {
    let parent = element.parentElement, held = false;
    while (parent && parent !== section) {
      if (["auto", "scroll", "hidden"].includes(getComputedStyle(parent).overflowX)) { held = true; break; }
      parent = parent.parentElement;
    }
    const r = element.getBoundingClientRect();
    if (!held && r.width > 0 && (r.left < box.left - 1 || r.right > box.right + 1)) {
      problems.push(section.id + ": " + element.tagName + " " + (element.textContent || "").slice(0, 60));
    }
  }
}
document.body.insertAdjacentHTML("beforeend", "<pre id='overflow'>" + JSON.stringify(problems) + "</pre>");
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.parametrize("width", [1400, 1000])
def test_nothing_overflows_its_section_at_desktop_and_laptop_widths(escaped_page: Path, tmp_path: Path, width: int):
    probed = tmp_path / "probed.html"
    probed.write_text(escaped_page.read_text(encoding="utf-8").replace("</body>", _OVERFLOW_PROBE + "</body>"))
    dom = _run_chromium(probed, tmp_path / "profile", "--dump-dom", f"--window-size={width},3000").stdout
    found = re.search(r"<pre id=\"overflow\">(.*?)</pre>", dom, re.S)
    assert found, dom[-2000:]
    assert json.loads(html_unescape(found.group(1))) == []


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)
