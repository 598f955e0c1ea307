"""Rewards of GlimpsePrune+ against hand-computed answers; the judge client against a stub server on 127.0.0.1."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from tests.training.plus.helpers import stub_server
from vtprune.errors import ConfigError
from vtprune.training.rewards import (JudgeClient, JudgeError, box_iou, box_reward, choice_letter, first_number,
                                      get_reward, numeric_match, parse_score, parse_type_rewards, reward_for,
                                      single_choice)


def rec(*answers: str, boxes=(), reward=None, question="q?", type=None):
    return SimpleNamespace(question=question, answers=list(answers), boxes=list(boxes), type=type,
                           extra={"reward": reward} if reward else {})


def test_exact_vqa_anls_by_name():
    assert get_reward("exact")("The Cat.", rec("cat")) == 1.0
    assert get_reward("exact")("a dog", rec("cat")) == 0.0
    # VQA accuracy: 2 of 3+ annotators said "red" -> 2/3
    assert get_reward("vqa")("red", rec("red", "red", "blue", "green")) == pytest.approx(2 / 3)
    # ANLS: "hello" vs "hallo" -> 1 edit / 5 = 0.2 < 0.5 -> 0.8
    assert get_reward("anls")("hello", rec("hallo")) == pytest.approx(0.8)
    assert get_reward("anls")("xyz", rec("hallo")) == 0.0


def test_nls_partial_credit():
    nls = get_reward("nls")
    assert nls("58", rec("57")) == pytest.approx(0.5)  # one of two characters wrong: ANLS and exact give 0
    assert get_reward("anls")("58", rec("57")) == 0.0
    assert nls("The 57.", rec("57")) == 1.0  # normalised as exact match is: 1.0 exactly when exact match is 1
    assert nls("down", rec("16")) == 0.0
    assert nls("123", rec("124", "923")) == pytest.approx(2 / 3)  # the best answer counts
    assert nls("", rec("57")) == 0.0
    assert nls("blue", rec("blue!")) == 1.0


def test_reward_by_task_type():
    by_type = {"document": "nls"}
    assert reward_for(rec("57", type="document"), "exact", by_type=by_type)("58", rec("57")) == pytest.approx(0.5)
    assert reward_for(rec("57", type="counting"), "exact", by_type=by_type)("58", rec("57")) == 0.0
    assert reward_for(rec("57"), "exact", by_type=by_type)("58", rec("57")) == 0.0  # no type: the default
    # a record's own reward key wins over its type's
    assert reward_for(rec("5", type="document", reward="numeric"), "exact", by_type=by_type)("5.01", rec("5")) == 1.0
    assert parse_type_rewards(["document=nls", " attribute = exact "]) == {"document": "nls", "attribute": "exact"}
    for bad in ("document", "=nls", "document=bleu"):
        with pytest.raises(ConfigError, match="--type-reward"):
            parse_type_rewards([bad])


def test_numeric_tolerance():
    assert first_number("about 1,234.5 units") == 1234.5
    assert first_number("three apples") == 3.0
    assert first_number("none") is None
    assert numeric_match("It is 101", ["100"]) == 1.0  # within 1 %
    assert numeric_match("It is 102", ["100"]) == 0.0
    assert numeric_match("0", ["0"]) == 1.0
    assert numeric_match("-5.0", ["-5"]) == 1.0
    assert numeric_match("no number", ["5"]) == 0.0


def test_single_choice():
    assert choice_letter("(b) a cat") == "B"
    assert choice_letter("Answer: C") == "C"
    assert choice_letter("B. cat") == "B"
    assert choice_letter("because") is None
    assert single_choice("B", ["B"]) == 1.0
    assert single_choice("(b)", ["B"]) == 1.0
    assert single_choice("C. dog", ["B"]) == 0.0
    assert single_choice("because", ["B"]) == 0.0  # a word starting with the letter is no pick
    assert single_choice("yes", ["Yes"]) == 1.0  # a non-letter answer: exact match


def test_box_iou_known_values():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)  # inter 1, union 4 + 4 - 1
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert box_reward("the box is [0, 0, 2, 2].", [[1, 1, 3, 3]]) == pytest.approx(1 / 7)
    assert box_reward("no box", [[1, 1, 3, 3]]) == 0.0
    assert box_reward("[0,0,2,2]", []) == 0.0


def test_reward_per_record_and_errors():
    assert reward_for(rec("5", reward="numeric"), "exact")("5.01", rec("5")) == 1.0
    assert reward_for(rec("5"), "exact")("5.01", rec("5")) == 0.0
    with pytest.raises(ConfigError, match="unknown reward 'bleu'"):
        get_reward("bleu")
    with pytest.raises(ConfigError, match="--judge-url"):
        get_reward("judge")
    with pytest.raises(ConfigError):
        JudgeClient("ftp://x")


def test_parse_score():
    assert parse_score("score: 0.7") == 0.7
    assert parse_score("Reasoning... Score: 3") == 1.0  # clipped
    assert parse_score("score: -1") == 0.0
    assert parse_score("I think it is fine") == 0.0  # the official rule: unparsable -> 0


def test_judge_scores_through_the_endpoint():
    with stub_server() as (srv, url):
        j = JudgeClient(url, model="qwen-judge", timeout=5)
        assert j("cat", rec("cat", question="What animal?")) == 1.0
        assert j("dog", rec("cat")) == 0.25
        path, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "qwen-judge" and body["temperature"] == 0.7 and body["seed"] == 42
    assert "Standard answer: cat" in body["messages"][0]["content"]
    assert "Question: What animal?" in body["messages"][0]["content"]


@pytest.mark.parametrize("mode,match", [("garbage", "not a chat completion"), ("nochoices", "not a chat completion"),
                                        ("error", "HTTP 500")])
def test_judge_malformed_replies_raise(mode, match):
    with stub_server(mode) as (_, url):
        with pytest.raises(JudgeError, match=match):
            JudgeClient(url, timeout=5)("cat", rec("cat"))


def test_judge_timeout_retries_then_raises():
    with stub_server("slow") as (srv, url):
        t0 = time.perf_counter()
        with pytest.raises(JudgeError, match="did not answer within 0.1 s \\(2 tries\\)"):
            JudgeClient(url, timeout=0.1, retries=1)("cat", rec("cat"))
        assert time.perf_counter() - t0 < 2.0
        time.sleep(0.6)  # let the slow handlers finish before the server stops
        assert len(srv.requests) == 2


def test_judge_unreachable():
    with stub_server() as (_, url):
        pass  # stopped: the port is closed now
    with pytest.raises(JudgeError, match="cannot reach"):
        JudgeClient(url, timeout=1, retries=0)("cat", rec("cat"))
