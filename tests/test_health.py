"""Health warnings: each fires on its condition, once per episode, and stays quiet otherwise."""

from __future__ import annotations

from prefalign.data.tokenize import TruncationReport
from prefalign.train.health import DivergenceLimits, HealthMonitor, truncation_warning


def _feed(monitor: HealthMonitor, split: str, key: str, values, start: int = 1) -> list[tuple[int, str]]:
    fired = []
    for step, value in enumerate(values, start=start):
        fired += [(step, warning) for warning in monitor.update(step, split, {key: value})]
    return fired


def test_kl_spike_warns_once_per_episode():
    monitor = HealthMonitor()
    values = [0.10, 0.11, 0.09, 0.10, 0.12, 0.10, 0.60, 0.70, 0.11, 0.10, 0.10, 0.10, 0.65]
    fired = _feed(monitor, "train", "kl", values)
    assert [step for step, _ in fired] == [7, 13]  # 0.70 right after 0.60 is the same episode
    _step, message = fired[0]
    assert message.startswith("step 7: train KL spike: 0.6 nats/token is 6.0x its recent median 0.1")
    assert "\n" not in message


def test_kl_spike_needs_history_and_the_floor():
    # Tiny KLs growing 10x early in training are normal: below the floor, no warning.
    assert _feed(HealthMonitor(), "train", "kl", [0.001, 0.001, 0.001, 0.001, 0.001, 0.02, 0.05]) == []
    # A big first value has no median to compare with.
    assert _feed(HealthMonitor(), "train", "kl", [5.0, 0.1, 0.1]) == []
    # Steady growth is not a spike.
    assert _feed(HealthMonitor(), "train", "kl", [0.1 + 0.01 * i for i in range(60)]) == []


def test_reward_gap_stalling_on_validation():
    monitor = HealthMonitor(gap_patience=3)
    margins = [0.0, 0.2, 0.4, 0.5, 0.45, 0.48, 0.5, 0.49, 0.7, 0.6, 0.6, 0.65]
    fired = _feed(monitor, "eval", "rewards/margins", margins)
    # After 0.5 (eval 4) the next three evals (5-7) never beat it: warn at 7. A new best at 9 ends the episode,
    # and evals 10-12 stay below 0.7: warn again at 12.
    assert [step for step, _ in fired] == [7, 12]
    assert fired[0][1] == (
        "step 7: the validation reward gap stopped growing: best 0.5 over the last 3 evaluations vs 0.5 before "
        "(converged, or overfitting the train pairs?)"
    )


def test_reward_gap_growing_or_on_train_does_not_warn():
    assert _feed(HealthMonitor(), "eval", "rewards/margins", [0.1 * i for i in range(20)]) == []
    # Train margins are too noisy to judge: only evaluations count.
    assert _feed(HealthMonitor(), "train", "rewards/margins", [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]) == []


def _feed_pairs(monitor, split, pairs):
    fired = []
    for step, (chosen, margin) in enumerate(pairs, start=1):
        metrics = {"logps/chosen": chosen, "rewards/margins": margin}
        fired += [(step, warning) for warning in monitor.update(step, split, metrics)]
    return fired


def test_chosen_logps_falling_while_the_gap_grows():
    monitor = HealthMonitor(logp_window=4)
    pairs = [
        (-40, 0.0),
        (-41, 0.1),
        (-42, 0.2),
        (-43, 0.3),
        (-44, 0.4),
        (-43.5, 0.5),
        (-44, 0.6),
        (-45, 0.7),
        (-46, 0.8),
        (-47, 0.9),
    ]
    fired = _feed_pairs(monitor, "train", pairs)
    # Steps 1-4 fall 4 times in a row: warn at 4; 5 continues the episode; 6 rises (ends it); 6-9 fall again: warn.
    assert [step for step, _ in fired] == [4, 9]
    assert fired[0][1].startswith(
        "step 4: train chosen log-probs fell in each of the last 4 records (-40 -> -43) while the reward gap grew "
        "(0 -> 0.3)"
    )


def test_chosen_logps_falling_with_a_shrinking_gap_or_rising_do_not_warn():
    monitor = HealthMonitor(logp_window=4)
    # Falling chosen log-probs with a shrinking margin is a different problem (not this warning).
    assert _feed_pairs(monitor, "train", [(-40, 0.4), (-41, 0.3), (-42, 0.2), (-43, 0.1)]) == []
    # Rising chosen log-probs: healthy.
    assert _feed_pairs(HealthMonitor(logp_window=4), "train", [(-40 + i, 0.1 * i) for i in range(10)]) == []
    # Noise: not monotone.
    assert (
        _feed_pairs(
            HealthMonitor(logp_window=4),
            "train",
            [(-40, 0.0), (-41, 0.1), (-40.5, 0.2), (-42, 0.3), (-43, 0.4), (-42.9, 0.5)],
        )
        == []
    )


def test_missing_and_non_finite_values_are_ignored():
    monitor = HealthMonitor()
    assert monitor.update(1, "train", {"loss": 0.7}) == []
    assert _feed(monitor, "train", "kl", [0.1] * 6 + [float("nan"), None, 0.1]) == []


def test_truncation_warning():
    clean = TruncationReport(records=10)
    assert truncation_warning(clean) is None
    report = TruncationReport()
    report.records = 10
    report.prompt_truncated = 2
    report.examples["prompt_truncated"] = ["data.jsonl:3", "data.jsonl:7"]
    report.dropped["no_room_for_completion"] = 1
    report.examples["no_room_for_completion"] = ["data.jsonl:9"]
    assert truncation_warning(report) == (
        "tokenization cut or dropped pairs: 10 pairs: 9 kept; 2 prompts truncated (e.g. data.jsonl:3, data.jsonl:7); "
        "1 dropped (no_room_for_completion: 1 (e.g. data.jsonl:9)); "
        "raise --max-length / --max-prompt-length to keep more"
    )
    cut_only = TruncationReport(records=4, completion_truncated=1, unit="examples")
    assert truncation_warning(cut_only).startswith("tokenization cut or dropped examples: 4 examples: 4 kept; 1 compl")


def _check(monitor: HealthMonitor, split: str, records: list[dict[str, float]]) -> list[tuple[int, str, bool]]:
    found = []
    for step, metrics in enumerate(records, start=1):
        found += [(step, f.message, f.diverged) for f in monitor.check(step, split, metrics)]
    return found


def test_loss_blowup_against_the_first_steps_for_every_objective():
    # SFT: per-token NLL; the baseline is the mean of the first 5 steps (4.0), the limit 10x that.
    sft = [{"loss": loss} for loss in (4.2, 4.1, 4.0, 3.9, 3.8, 3.0, 39.0, 41.0, 3.0, 45.0)]
    found = _check(HealthMonitor(), "train", sft)
    assert [(step, diverged) for step, _, diverged in found] == [(8, True), (10, True)]  # 39 < 40; one per episode
    assert found[0][1] == (
        "step 8: diverged: train loss 41 is above --divergence-loss-factor 10 x 4 (its mean over the first 5 values)"
    )
    # A loss near 0 is floored at 0.1, so small wobbles are not a blow-up; a reward model's loss is judged alike.
    assert _check(HealthMonitor(), "train", [{"loss": 0.01}, {"loss": 0.5}, {"loss": 0.9}]) == []
    assert _check(HealthMonitor(limits=DivergenceLimits(loss_factor=0)), "train", [{"loss": 1}, {"loss": 99}]) == []


def test_dpo_kl_and_log_probability_collapse():
    sound = {"loss": 0.69, "kl": 0.05, "logps/chosen": -60.0, "logps/rejected": -70.0, "logratio": -2.0}
    destroyed = {"loss": 0.9, "kl": 10.0, "logps/chosen": -450.0, "logps/rejected": -500.0, "logratio": -400.0}
    found = _check(HealthMonitor(), "train", [sound, sound, destroyed])
    assert [message for _, message, _ in found] == [
        "step 3: diverged: train KL from the reference 10 nats/token is above --divergence-max-kl 5",
        "step 3: diverged: train log-probability of the responses -950 is 6.33x the reference's -150 (per pair; as "
        "much per token), above --divergence-logp-factor 4",
    ]
    # Precomputed reference log-probs: no KL, the log-prob check still works; each check can be turned off.
    no_kl = {key: value for key, value in destroyed.items() if key != "kl"}
    assert len(_check(HealthMonitor(), "train", [sound, no_kl])) == 1
    limits = DivergenceLimits(max_kl=0, logp_factor=0)
    assert _check(HealthMonitor(limits=limits), "train", [sound, destroyed]) == []


def test_zero_gradient_at_a_non_zero_loss_warns_once_per_episode():
    records = [
        {"loss": 0.6, "grad_norm": 1.0},
        {"loss": 0.6, "grad_norm": 0.0},
        {"loss": 0.6, "grad_norm": 0.0},
        {"loss": 1e-9, "grad_norm": 0.0},  # a solved loss may round its gradient to 0: fine
        {"loss": 0.6, "grad_norm": 0.0},
    ]
    found = _check(HealthMonitor(), "train", records)
    assert [(step, diverged) for step, _, diverged in found] == [(2, False), (5, False)]
    assert found[0][1].startswith("step 2: the gradient norm is exactly 0 at a train loss of 0.6: nothing is learning")


def test_the_loss_baseline_survives_a_checkpoint():
    monitor = HealthMonitor()
    _check(monitor, "train", [{"loss": 1.0}] * 3)
    resumed = HealthMonitor()
    resumed.load_state(monitor.state())
    assert [d for _, _, d in _check(resumed, "train", [{"loss": 11.0}])] == [True]  # vs 1.0, not vs itself
    fresh = HealthMonitor()
    fresh.load_state(None)  # a checkpoint of an older version
    assert _check(fresh, "train", [{"loss": 11.0}]) == []
