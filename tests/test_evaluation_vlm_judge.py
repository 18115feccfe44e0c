"""The local VLM judge: robust parsing of replies, and the judge itself on a tiny random LLaVA saved to disk."""

from __future__ import annotations

import pytest
import torch
from evaluation_fixtures import make_tiny_llava, pattern_image

from model.evaluation.vlm_judge import PQ_PROMPT, SC_PROMPT, VlmJudge, overall_score, parse_scores

torch.set_num_threads(1)


@pytest.mark.parametrize("reply, expected", [
    ('{"score": [8, 6], "reasoning": "ok"}', [8.0, 6.0]),
    ('Sure! ```json\n{"score": [7.5, 10], "reasoning": "the cup is red"}\n```', [7.5, 10.0]),
    ('{"reasoning": "bad"} then {"scores": [3, 4]}', [3.0, 4.0]),
    ("Editing success: 9/10, over-editing: 7/10", [9.0, 7.0]),
    ("Score: 4, 5. The edit is partial.", [4.0, 5.0]),
    ("scores [2 and 0]", [2.0, 0.0]),
])
def test_parse_scores_accepts_the_usual_reply_shapes(reply, expected):
    assert parse_scores(reply) == expected


@pytest.mark.parametrize("reply", [
    "",
    "the the the",
    "There are 3 cups and 2 plates in the image.",  # numbers in prose are not scores
    '{"score": [11, 40]}',  # out of range
    '{"score": "high"}',
    "score: 7",  # only one of the two
])
def test_parse_scores_refuses_what_is_not_two_scores(reply):
    assert parse_scores(reply) is None


def test_overall_is_viescore_geometric_mean_of_the_minima():
    assert overall_score([8, 6], [9, 4]) == pytest.approx((6 * 4) ** 0.5 / 10)
    assert overall_score(None, [9, 4]) is None


def test_judge_runs_a_local_llava_and_parses_its_own_replies(tmp_path):
    judge = VlmJudge(make_tiny_llava(tmp_path / "llava"), max_new_tokens=6)
    image, output = pattern_image(0, 48), pattern_image(1, 48)
    verdict = judge.judge(image, output, "make the cup red")
    # greedy decoding: asking again gives the same replies, and the verdict is exactly their parse
    sc = parse_scores(judge.ask([image, output], SC_PROMPT.format(instruction="make the cup red")))
    pq = parse_scores(judge.ask([output], PQ_PROMPT))
    assert (verdict.sc, verdict.pq, verdict.overall) == (sc, pq, overall_score(sc, pq))
    assert (verdict.note is None) == (verdict.overall is not None)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VlmJudge(tmp_path / "nothing")
