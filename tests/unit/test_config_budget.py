"""An app's ``max_unavailable`` (its disruption budget): a count or a percentage, and located errors."""

from __future__ import annotations

import pytest
from test_config import in_tmp, load_text, problems  # noqa: F401  (in_tmp: an autouse fixture)

from supervise.config.model import MaxUnavailable
from supervise.core.rollout import PROCESS_FIELDS

APP = '[apps.web]\ncommand = "run"\ninstances = 8\n'  # the tested key goes on line 4
EXPECTED = 'expected a count >= 1 or a percentage from "1%" to "100%" (like "25%")'


def test_absent_means_a_quarter_and_at_least_one():
    budget = load_text(APP).apps["web"].max_unavailable
    assert budget == MaxUnavailable(25, percent=True) and not budget.unlimited and str(budget) == "25%"
    assert budget.of(8) == 2 and budget.of(7) == 1 and budget.of(1) == 1


def test_no_limit_is_asked_for():
    budget = load_text(APP + 'max_unavailable = "100%"\n').apps["web"].max_unavailable
    assert budget.unlimited and budget.of(8) == 8


def test_a_count():
    budget = load_text(APP + "max_unavailable = 2\n").apps["web"].max_unavailable
    assert budget == MaxUnavailable(2, percent=False) and budget.of(8) == 2 and not budget.unlimited
    assert str(budget) == "2" and budget.of(1) == 2  # more than the instances: simply no limit in effect


@pytest.mark.parametrize(("text", "instances", "count"), [
    ('"25%"', 8, 2), ('"25%"', 7, 1), ('"25%"', 1, 1), ('"10%"', 3, 1), ('"50%"', 9, 4), ('" 30 % "', 10, 3),
    ('"100%"', 5, 5),
])
def test_a_percentage_of_the_instances_rounded_down_but_at_least_one(text, instances, count):
    budget = load_text(APP + f"max_unavailable = {text}\n").apps["web"].max_unavailable
    assert budget.percent and budget.of(instances) == count


@pytest.mark.parametrize("value", ["0", "-1", '"0%"', '"101%"', '"25"', '"25 percent"', '"2.5%"', "2.5", "true",
                                   "[2]", '"%"'])
def test_bad_values_are_located(value):
    assert problems(APP + f"max_unavailable = {value}\n") == [
        f"supervise.toml:4: apps.web.max_unavailable: {EXPECTED}, got {value.strip()}"]


def test_a_typo_says_did_you_mean():
    [problem] = problems(APP + "max_unavailble = 2\n")
    assert problem == 'supervise.toml:4: apps.web.max_unavailble: unknown key (did you mean "max_unavailable"?)'


def test_a_change_applies_in_place_without_a_rollout():
    assert "max_unavailable" not in PROCESS_FIELDS
