"""`run_evaluation`: generate with every model, score, compare, measure drift and held-out accuracy, and report.

Order of work, chosen so each model is loaded at most once and only when something about it is not cached:
  1. check everything that can be checked without a model (prompts, instructions, judges, pairs, run directories);
  2. per model, in column order (`passes.model_pass`): greedy answers, then (not for the base) k temperature-1
     samples and the KL from the base, then (for the reference and the models after it) the held-out pairs'
     log-probs; the base stays loaded while later models need it for KL;
  3. scores of every response, pairwise verdicts of every baseline pair by every judge, held-out accuracies;
  4. the table, then report.md / .csv / .json / .html and responses.jsonl.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import console
from ..data.records import PreferenceRecord
from ..errors import PrefalignError
from ..generate import Generation
from ..judges.base import Judge, JudgeItem
from ..judges.reward_model import RewardModelJudge
from .cache import GenerationCache
from .config import EvalConfig
from .implicit_reward import (
    HeldoutAccuracy,
    PairLogps,
    implicit_reward_accuracy,
    judge_accuracy,
    load_pairs,
)
from .kl import KLEstimate
from .models import DigestMemo, EvalModel
from .pairwise import PairwiseResult, compare
from .passes import model_pass, precision, scores_in_bf16
from .prompt_set import EvalPrompt, load_eval_prompts
from .results import EvalReport
from .scoring import ResponseScores, score_all
from .stats import LEVEL, RESAMPLES, SEED
from .table import (
    HEURISTIC_METRICS,
    IFEVAL_METRICS,
    Metric,
    MetricValues,
    Row,
    all_deltas,
    build_rows,
    instruction_breakdown,
    judge_label,
    judge_metric,
    response_values,
)

_HTTP_JUDGES = ("openai", "anthropic")
# Prompt-level strict accuracy on the prompts worded only in phrasings no train prompt uses (`unseen_phrasing`).
UNSEEN_PHRASING_METRIC = Metric(
    "ifeval/prompt_strict_unseen", "IFEval prompt-level accuracy (strict), unseen phrasings", "proportion", True
)


# Progress lines of an evaluation, through the one output path for our messages.
_SAY_EVAL = functools.partial(console.say, prefix="[eval] ")


def run_evaluation(config: EvalConfig, *, progress: bool = True, say: Callable[[str], None] = _SAY_EVAL) -> EvalReport:
    """Evaluate `config.models` on `config.prompts`, write the report files to `config.output_dir`, return it all."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    prompts = load_eval_prompts(config.prompts, config.limit)
    verifier = _verifier(prompts)
    judge_specs = list(dict.fromkeys(config.judges or (["verifier"] if verifier is not None else [])))
    judges = [_load_judge(spec, config.judge_options) for spec in judge_specs]
    for judge in judges:  # a model judge scores at the evaluation's precision, as the answers were generated
        if isinstance(judge, RewardModelJudge):
            judge.bf16 = scores_in_bf16(config)
            judge.progress = progress
    try:
        pairs = load_pairs(config.pairs, config.pairs_limit) if config.pairs else None
        runs = _check_runs(config.runs)
        config.output_dir.mkdir(parents=True, exist_ok=True)
        digests = DigestMemo(config.cache_root / "digests.json")
        models = {
            label: EvalModel(label, spec, digests, trust_remote_code=config.trust_remote_code)
            for label, spec in config.models
        }
        timings["setup"] = time.perf_counter() - started
        say(f"{len(prompts)} prompts, models {', '.join(config.labels)}, judges {', '.join(judge_specs) or 'none'}")

        notes: list[str] = []
        cache = GenerationCache(config.cache_root)
        generations, kl, logps = model_pass(config, models, cache, prompts, pairs, timings, notes, progress, say)

        t = time.perf_counter()
        say(f"judging {len(prompts) * len(generations)} answers: {', '.join(judge_specs) or 'heuristics only'}")
        scores, pointwise = score_all(prompts, generations, verifier, judges)
        timings["score"] = time.perf_counter() - t

        t = time.perf_counter()
        pairwise = _pairwise(config, judges, prompts, generations, scores, pointwise)
        timings["pairwise"] = time.perf_counter() - t

        t = time.perf_counter()
        if pairs is not None:
            say(f"judging {len(pairs)} held-out pairs: {', '.join(judge_specs) or 'implicit reward only'}")
        heldout, heldout_info = _heldout(config, judges, pairs, logps, notes) if pairs is not None else ([], {})
        timings["heldout_judges"] = time.perf_counter() - t

        metrics, values = _metric_values(config, prompts, scores, pointwise, kl, heldout)
        delta_pair = config.baseline_pairs[0] if config.baseline_pairs else None
        rows = build_rows(metrics, values, config.labels, delta_pair)
        rows += _pairwise_rows(pairwise, config.labels)
        report = EvalReport(
            labels=config.labels,
            models={label: _model_info(model) for label, model in models.items()},
            prompts=prompts,
            generations=generations,
            scores=scores,
            rows=rows,
            delta_pair=delta_pair,
            deltas=all_deltas(metrics, values, config.baseline_pairs),
            pairwise=pairwise,
            instructions=instruction_breakdown(scores),
            heldout=heldout,
            heldout_info=heldout_info,
            kl=kl,
            settings=_settings(config, prompts, judge_specs),
            runs={label: str(path) for label, path in runs.items()},
            timings=timings,
            generation_counts=_generation_counts(cache, config.labels),
            judge_stats={judge.name: judge.stats() for judge in judges if judge.stats()},
            notes=notes,
        )
    finally:
        for judge in judges:
            judge.close()
    timings["total"] = time.perf_counter() - started  # up to the report files, which are written with it
    _write_reports(report, config.output_dir)
    return report


def _pairwise(
    config: EvalConfig,
    judges: list[Judge],
    prompts: list[EvalPrompt],
    generations: dict[str, list[Generation]],
    scores: dict[str, list[ResponseScores]],
    pointwise: list[str],
) -> list[PairwiseResult]:
    """Step 3, pairwise: every judge's verdicts on every (model, baseline) pair of answers."""
    responses = {label: [g.text for g in gens] for label, gens in generations.items()}
    words = {label: [s.words for s in label_scores] for label, label_scores in scores.items()}
    judge_scores = {
        j.name: {label: [s.judges[j.name] for s in scores[label]] for label in scores}
        for j in judges
        if j.name in pointwise
    }
    return [
        compare(judge, prompts, model, baseline, responses, judge_scores.get(judge.name), words)
        for model, baseline in config.baseline_pairs
        for judge in judges
    ]


def _heldout(
    config: EvalConfig,
    judges: list[Judge],
    pairs: list[PreferenceRecord],
    logps: dict[str, PairLogps],
    notes: list[str],
) -> tuple[list[HeldoutAccuracy], dict[str, Any]]:
    """Step 3, held-out pairs: each model's implicit-reward accuracy and each judge's, and what they were taken on."""
    reference = config.reference_label
    heldout = []
    if config.implicit_reward_labels:
        assert reference is not None, "EvalConfig requires a reference for the implicit reward"
        for label in config.implicit_reward_labels:
            scorer = f"{label} implicit reward (ref {reference}, beta {config.beta:g})"
            heldout.append(implicit_reward_accuracy(scorer, logps[label], logps[reference], config.beta))
    for judge in judges:
        result = judge_accuracy(judge, pairs)
        if result.accuracy is None:  # e.g. the verifier on pairs whose prompts carry no instructions
            notes.append(f"judge {judge.name} could not score any held-out pair ({result.first_error})")
        else:
            heldout.append(result)
    if not config.implicit_reward:
        notes.append("no implicit reward on the held-out pairs: --no-implicit-reward")
    elif not config.implicit_reward_labels:
        notes.append(f"no implicit reward: no model is listed after the reference {reference}")
    dropped = logps[reference].dropped if reference in logps else None
    info = {
        "source": config.pairs,
        "pairs": len(pairs),
        "dropped": dropped,
        "reference": reference if config.implicit_reward else None,
        "beta": config.beta,
    }
    return heldout, info


def _model_info(model: EvalModel) -> dict[str, Any]:
    source = model.source
    return {
        "spec": model.spec,
        "identity": model.identity,
        "path": source.path,
        "adapter": source.adapter,
        "loads": model.loads,
    }


def _generation_counts(cache: GenerationCache, labels: list[str]) -> dict[str, dict[str, int]]:
    return {
        label: {"generated": cache.generated.get(label, 0), "cached": cache.cached.get(label, 0)} for label in labels
    }


def _verifier(prompts: list[EvalPrompt]) -> Judge | None:
    """The verifier when some prompt has verifiable instructions, after checking that every such prompt's
    instructions are known and fully specified (a bad prompt file fails here, before any generation)."""
    if not any(p.instruction_ids for p in prompts):
        return None
    from ..judges.verifier import VerifierJudge

    verifier = VerifierJudge("strict")
    with_instructions = [p for p in prompts if p.instruction_ids]
    scores = verifier.score([JudgeItem(p.prompt, "", p.meta) for p in with_instructions])
    for prompt, score in zip(with_instructions, scores):
        if score.value is None:
            raise PrefalignError(f"prompt {prompt.id}: {score.error}")
    return verifier


def _load_judge(spec: str, options: dict[str, Any]) -> Judge:
    from ..judges.registry import load_judge

    # HTTP options (endpoint, key variable, template, cache) mean nothing to the other judges, which refuse them.
    return load_judge(spec, **(options if spec.partition(":")[0] in _HTTP_JUDGES else {}))


def _check_runs(runs: dict[str, str]) -> dict[str, Path]:
    checked = {}
    for label, directory in runs.items():
        path = Path(directory)
        if not (path / "metrics.jsonl").is_file():
            raise PrefalignError(f"--run {label}={directory}: no metrics.jsonl there (is it a training run directory?)")
        checked[label] = path
    return checked


def _metric_values(
    config: EvalConfig,
    prompts: list[EvalPrompt],
    scores: dict[str, list[ResponseScores]],
    pointwise: list[str],
    kl: dict[str, KLEstimate],
    heldout: list[HeldoutAccuracy],
) -> tuple[list[Metric], MetricValues]:
    """The table's metrics, in order, and their per-item values by model."""
    # The verifier's pointwise score is the per-prompt fraction of instructions followed: the IFEval rows say it better.
    judge_names = [name for name in pointwise if not name.startswith("verifier")]
    metrics = [*IFEVAL_METRICS, *(judge_metric(name) for name in judge_names), *HEURISTIC_METRICS]
    values = response_values(scores, judge_names)
    unseen = [p.unseen_phrasing for p in prompts]
    if any(unseen) and "ifeval/prompt_strict" in values:  # its own row: did the model learn more than a wording?
        metrics.insert(1, UNSEEN_PHRASING_METRIC)
        values[UNSEEN_PHRASING_METRIC.key] = {
            label: [value if u else None for value, u in zip(items, unseen)]
            for label, items in values["ifeval/prompt_strict"].items()
        }
    if kl:
        metrics.append(Metric("kl", f"KL from {config.base_label} (nats/response, sampled)", "mean", None, 2))
        # Prompts beyond --kl-prompts have no estimate: None, like the unseen-phrasing row's other prompts.
        values["kl"] = {
            label: [*estimate.kl, *[None] * (len(prompts) - len(estimate.kl))] for label, estimate in kl.items()
        }
    implicit = [(h.outcomes, h.margins) for h in heldout if h.margins is not None]
    if implicit:
        reference = config.reference_label
        metrics.append(
            Metric("implicit/accuracy", f"Implicit-reward accuracy, held-out pairs (ref {reference})", "mean", True)
        )
        metrics.append(
            Metric("implicit/margin", f"Implicit-reward margin, held-out pairs (β={config.beta:g})", "mean", True, 2)
        )
        for label, (outcomes, margins) in zip(config.implicit_reward_labels, implicit):
            values.setdefault("implicit/accuracy", {})[label] = list(outcomes)
            values.setdefault("implicit/margin", {})[label] = list(margins)
    return metrics, values


def _pairwise_rows(pairwise: list[PairwiseResult], labels: list[str]) -> list[Row]:
    """Win-rate rows: the value sits in the model's column; the baseline is in the row's name."""
    rows = []
    for result in pairwise:
        for suffix, estimate, name in (("", result.win_rate, "Win rate"), ("/lc", result.lc_win_rate, "LC win rate")):
            if estimate is None:
                continue
            key = f"win_rate{suffix}/{result.judge}/{result.model}:{result.baseline}"
            metric = Metric(key, f"{name} vs {result.baseline} ({judge_label(result.judge)})", "mean", True)
            rows.append(Row(metric, {label: estimate if label == result.model else None for label in labels}))
    return rows


def _settings(config: EvalConfig, prompts: list[EvalPrompt], judge_specs: list[str]) -> dict[str, Any]:
    return {
        "prompts": config.prompts,
        "limit": config.limit,
        "num_prompts": len(prompts),
        "generation": {**dataclasses.asdict(config.generation), "dtype": precision(config.generation.dtype)},
        "judges": judge_specs,
        "baselines": [f"{m}:{b}" for m, b in config.baseline_pairs],
        "kl": {
            "base": config.base_label,
            "samples_per_prompt": config.kl_samples,
            "max_new_tokens": config.kl_max_new_tokens,
            "prompts": min(len(prompts), config.kl_prompts or len(prompts)),
            "temperature": 1.0,
        },
        "pairs": config.pairs,
        "reference": config.reference_label if config.pairs and config.implicit_reward else None,
        "beta": config.beta,
        "confidence": {"level": LEVEL, "bootstrap_resamples": RESAMPLES, "bootstrap_seed": SEED},
    }


def _write_reports(report: EvalReport, out: Path) -> None:
    from .export import write_csv, write_json, write_responses
    from .report_html import write_html
    from .report_md import write_markdown

    write_markdown(report, out / "report.md")
    write_csv(report, out / "report.csv")
    write_json(report, out / "report.json")
    write_responses(report, out / "responses.jsonl")
    write_html(report, out / "report.html")
