"""LLM judges over HTTP, against a real local server speaking the OpenAI and Anthropic API shapes."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import pytest

from helpers.fake_llm_server import ANTHROPIC_PATH, OPENAI_PATH, FakeLLMServer, Reply
from prefalign.errors import PrefalignError
from prefalign.judges import JudgeItem, VerifierJudge, load_judge
from prefalign.judges.http import RetryPolicy, retry_after_seconds
from prefalign.judges.llm import parse_rating, parse_verdict, render

API_KEY = "sk-test-5ecret-Key-0042"


def prefer_good(prompt: str) -> Reply:
    """A position-unbiased fake judge: it prefers whichever answer says GOOD, wherever it stands."""
    return Reply(
        text="Both answer. The GOOD one wins. [[A]]"
        if prompt.index("GOOD") < prompt.index("BAD")
        else "Both answer. The GOOD one wins. [[B]]"
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    with FakeLLMServer(api_key=API_KEY) as fake:
        yield fake


def make_judge(server: FakeLLMServer, tmp_path: Path, spec: str = "openai:judge-model", **options):
    base_url = server.base_url + ("/v1" if spec.startswith("openai:") else "")
    options = {
        "cache_path": tmp_path / "cache.sqlite",
        "timeout": 2.0,
        "max_retries": 2,
        "backoff_base": 0.001,
        **options,
    }
    return load_judge(spec, base_url=base_url, **options)


PROMPTS = ["What is 2+2?", [{"role": "user", "content": "Name a colour."}]]
GOOD_FIRST = ["GOOD: 4", "BAD: 5"]
GOOD_SECOND = ["BAD: blue-ish", "GOOD: blue"]


def test_consistent_verdicts_in_both_orders(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(prefer_good)
    judge = make_judge(server, tmp_path)
    verdicts = judge.compare(PROMPTS, GOOD_FIRST, GOOD_SECOND)
    assert [v.preferred for v in verdicts] == ["a", "b"]
    assert all(v.details["consistent"] and v.error is None for v in verdicts)
    assert verdicts[0].details["orders"] == {"ab": "a", "ba": "a"}
    assert len(server.requests) == 4  # two orders per pair
    request = server.requests[0]
    assert request.path == OPENAI_PATH
    assert request.body["model"] == "judge-model" and request.body["temperature"] == 0.0
    assert {r.prompt.index("GOOD") < r.prompt.index("BAD") for r in server.requests} == {True, False}
    assert sum("Name a colour." in r.prompt for r in server.requests) == 2
    assert judge.stats() == {
        "requests": 4,
        "cache_hits": 0,
        "retries": 0,
        "failures": 0,
        "unparseable": 0,
        "inconsistent": 0,
    }


def test_position_biased_judge_gives_an_inconsistent_tie(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(lambda prompt: Reply(text="Assistant A is better. [[A]]"))
    judge = make_judge(server, tmp_path)
    (verdict,) = judge.compare(PROMPTS[:1], GOOD_FIRST[:1], GOOD_SECOND[:1])
    assert verdict.preferred == "tie" and verdict.error is None
    assert verdict.details["consistent"] is False
    assert verdict.details["orders"] == {"ab": "a", "ba": "b"}
    assert judge.stats()["inconsistent"] == 1


def test_rate_limit_then_success_waits_as_told(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(prefer_good)
    server.reply(Reply(status=429, text="Rate limit reached", headers={"Retry-After": "1"}))
    judge = make_judge(server, tmp_path, concurrency=1)
    (verdict,) = judge.compare(PROMPTS[:1], GOOD_FIRST[:1], GOOD_SECOND[:1])
    assert verdict.preferred == "a" and verdict.details["consistent"]
    first, retried = server.requests[:2]
    assert first.body == retried.body
    assert retried.received_at - first.received_at >= 0.95  # Retry-After honoured, not the 1 ms backoff
    assert judge.stats()["retries"] == 1 and judge.stats()["requests"] == 3


def test_server_errors_then_success(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(prefer_good)
    server.reply(Reply(status=500, text="internal"), Reply(status=503, text="unavailable"))
    judge = make_judge(server, tmp_path, concurrency=1)
    (verdict,) = judge.compare(PROMPTS[:1], GOOD_FIRST[:1], GOOD_SECOND[:1])
    assert verdict.preferred == "a"
    assert judge.stats()["retries"] == 2 and judge.stats()["failures"] == 0


def test_timeouts_are_retried_then_recorded_as_failures(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(lambda prompt: Reply(text="[[A]]", delay=1.5))
    judge = make_judge(server, tmp_path, timeout=0.2, max_retries=1)
    start = time.monotonic()
    (verdict,) = judge.compare(PROMPTS[:1], GOOD_FIRST[:1], GOOD_SECOND[:1])
    assert time.monotonic() - start < 1.4  # gave up on its own timeout, did not wait for the slow answers
    assert verdict.preferred is None
    assert "timed out" in verdict.error and "gave up after 2 attempts" in verdict.error
    assert judge.stats()["failures"] == 2 and judge.stats()["retries"] == 2 and judge.stats()["requests"] == 4
    assert len(judge.client.cache) == 0  # failures are not cached: a rerun tries again


def test_garbage_answers_are_counted_not_crashed_on(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(lambda prompt: Reply(text="Lorem ipsum dolor sit amet."))
    judge = make_judge(server, tmp_path)
    (verdict,) = judge.compare(PROMPTS[:1], GOOD_FIRST[:1], GOOD_SECOND[:1])
    assert verdict.preferred is None and "unparseable judge answer: 'Lorem ipsum" in verdict.error
    assert judge.stats()["unparseable"] == 2


def test_a_malformed_response_body_is_a_failure(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(lambda prompt: Reply(raw=b"<html>502 Bad Gateway</html>"))
    judge = make_judge(server, tmp_path)
    (verdict,) = judge.compare(PROMPTS[:1], GOOD_FIRST[:1], GOOD_SECOND[:1])
    assert verdict.preferred is None and "malformed openai response" in verdict.error
    assert judge.stats()["failures"] == 2


def test_a_rerun_is_answered_from_the_cache_without_requests(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(prefer_good)
    first = make_judge(server, tmp_path).compare(PROMPTS, GOOD_FIRST, GOOD_SECOND)
    assert len(server.requests) == 4
    rerun_judge = make_judge(server, tmp_path)  # a new process would open the same file
    rerun = rerun_judge.compare(PROMPTS, GOOD_FIRST, GOOD_SECOND)
    assert len(server.requests) == 4
    assert [v.preferred for v in rerun] == [v.preferred for v in first] == ["a", "b"]
    assert rerun_judge.stats()["cache_hits"] == 4 and rerun_judge.stats()["requests"] == 0
    # A different request (here the other provider's model name) is a different key.
    make_judge(server, tmp_path, spec="openai:other-model").compare(PROMPTS, GOOD_FIRST, GOOD_SECOND)
    assert len(server.requests) == 8


def test_api_key_goes_in_the_header_and_nowhere_else(
    server: FakeLLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    server.answer_with(prefer_good)
    server.reply(Reply(status=429, text="slow down", headers={"retry-after-ms": "10"}))
    judge = make_judge(server, tmp_path, concurrency=1)
    verdicts = judge.compare(PROMPTS, GOOD_FIRST, GOOD_SECOND)
    assert [v.preferred for v in verdicts] == ["a", "b"]
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {API_KEY}"}
    messages = capsys.readouterr().err
    assert "retry 1/2" in messages and API_KEY not in messages
    judge.close()
    cache_bytes = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert len(cache_bytes) > 0 and API_KEY.encode() not in cache_bytes
    assert API_KEY not in repr(judge.client) and API_KEY not in repr(verdicts)


def test_key_from_a_named_variable_and_key_errors(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    server.answer_with(prefer_good)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MY_JUDGE_KEY", API_KEY)
    judge = make_judge(server, tmp_path, api_key_env="MY_JUDGE_KEY")
    assert judge.compare(PROMPTS[:1], GOOD_FIRST[:1], GOOD_SECOND[:1])[0].preferred == "a"
    with pytest.raises(PrefalignError, match="set the environment variable NOT_SET_ANYWHERE"):
        make_judge(server, tmp_path, api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(PrefalignError, match="set the environment variable OPENAI_API_KEY"):
        load_judge("openai:gpt-4o", cache_path=tmp_path / "cache.sqlite")  # the real API needs a key
    # A local server needs no key; this one wants one, and a wrong key stops the run with one line.
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-wrong")
    wrong = make_judge(server, tmp_path, api_key_env="MY_JUDGE_KEY")
    with pytest.raises(PrefalignError, match="HTTP 401 .*invalid api key"):
        wrong.compare(PROMPTS[1:], GOOD_FIRST[1:], GOOD_SECOND[1:])  # not the pair cached above
    assert wrong.stats()["retries"] == 0


def test_anthropic_messages_shape(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(prefer_good)
    server.reply(Reply(status=529, text="Overloaded"))
    judge = make_judge(server, tmp_path, spec="anthropic:claude-judge", concurrency=1)
    assert judge.name == "anthropic:claude-judge"
    verdicts = judge.compare(PROMPTS, GOOD_FIRST, GOOD_SECOND)
    assert [v.preferred for v in verdicts] == ["a", "b"]
    request = server.requests[-1]
    assert request.path == ANTHROPIC_PATH
    assert request.headers["x-api-key"] == API_KEY and request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.body["model"] == "claude-judge" and request.body["max_tokens"] == 1024
    assert request.body["messages"][0]["role"] == "user"
    assert judge.stats()["retries"] == 1


def test_pointwise_ratings(server: FakeLLMServer, tmp_path: Path):
    ratings = {"first": "Solid.\nRating: [[4]]", "second": "Great. Rating: 5", "third": "Rating: [[9]]"}
    server.answer_with(lambda prompt: Reply(text=next(v for k, v in ratings.items() if k in prompt)))
    judge = make_judge(server, tmp_path)
    scores = judge.score([JudgeItem("q", name) for name in ratings])
    assert [s.value for s in scores] == [4.0, 5.0, None]
    assert "unparseable rating" in scores[2].error
    assert judge.stats()["unparseable"] == 1


def test_concurrency_limit(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(lambda prompt: Reply(text="[[C]]", delay=0.1))
    judge = make_judge(server, tmp_path, concurrency=2)
    verdicts = judge.compare(["q"] * 4, [f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)])
    assert [v.preferred for v in verdicts] == ["tie"] * 4 and all(v.details["consistent"] for v in verdicts)
    assert server.max_in_flight == 2


def test_custom_template_file(server: FakeLLMServer, tmp_path: Path):
    server.answer_with(prefer_good)
    template = tmp_path / "judge.txt"
    template.write_text('Q={question} | A={answer_a} | B={answer_b} | JSON stays: {"x": 1}. Reply [[A]]/[[B]]/[[C]]')
    judge = make_judge(server, tmp_path, template=template)
    assert judge.compare(["2+2?"], ["GOOD 4"], ["BAD {answer_b}"])[0].preferred == "a"
    assert {r.prompt for r in server.requests} == {
        'Q=2+2? | A=GOOD 4 | B=BAD {answer_b} | JSON stays: {"x": 1}. Reply [[A]]/[[B]]/[[C]]',
        'Q=2+2? | A=BAD {answer_b} | B=GOOD 4 | JSON stays: {"x": 1}. Reply [[A]]/[[B]]/[[C]]',
    }
    broken = tmp_path / "broken.txt"
    broken.write_text("Only {question} and {answer_a}")
    with pytest.raises(PrefalignError, match=r"broken.txt: .*lacks the placeholder\(s\) \{answer_b\}"):
        make_judge(server, tmp_path, template=broken)


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("Reasoning... [[A]]", "A"),
        ("Format is [[A]], [[B]] or [[C]]. My verdict: [[B]]", "B"),
        ("[[ c ]]", "C"),
        ("[[Tie]]", "C"),
        ("Final verdict: Assistant B", "B"),
        ("The verdict is a tie.", "C"),
        ("Overall, Assistant A is clearly better than B.", "A"),
        ("Response A is better in tone, response B is better in facts.", None),
        ("It's a tie: both are fine.", "C"),
        ("I cannot judge this.", None),
        ("", None),
    ],
)
def test_parse_verdict(answer: str, expected: str | None):
    assert parse_verdict(answer) == expected


def test_parse_rating_and_render():
    assert parse_rating("Rating: [[3]] ... actually Rating: [[4.5]]") == 4.5
    assert parse_rating("Rating: [[0]]") is None and parse_rating("no number") is None
    assert render("{question}/{answer}", {"question": "{answer}", "answer": "x"}) == "{answer}/x"


def test_retry_after_parsing_and_backoff():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 < retry_after_seconds({"retry-after": in_ten}) <= 10
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None
    policy = RetryPolicy(max_retries=5, backoff_base=1.0, backoff_max=5.0)
    assert all(1.0 <= policy.delay(1, None) <= 2.0 for _ in range(50))  # the 2nd retry: half to all of 2**1
    assert len({policy.delay(1, None) for _ in range(10)}) > 1  # jittered
    assert policy.delay(10, None) <= 5.0 and policy.delay(0, 30.0) == 5.0


def test_registry_specs(tmp_path: Path):
    assert isinstance(load_judge("verifier"), VerifierJudge)
    assert load_judge("verifier:loose").name == "verifier:loose"
    with pytest.raises(PrefalignError, match="unknown judge 'gpt4'"):
        load_judge("gpt4")
    with pytest.raises(PrefalignError, match="--judge-base-url apply only to openai"):
        load_judge("verifier", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(PrefalignError, match="needs a model name"):
        load_judge("openai:", base_url="http://127.0.0.1:1/v1", cache_path=tmp_path / "c.sqlite")
