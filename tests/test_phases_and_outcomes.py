"""The phases of a LIBERO episode and the object it picked (model-free), and the clustered logistic regression
the target-attention study relates attention to outcomes with."""

from __future__ import annotations

import numpy as np
import pytest

from vla_lab.errors import InputError
from vla_lab.stats import logistic_regression_clustered
from vla_lab.worlds.libero.phases import LIFTED, PICKED, episode_phases, picked_object


def test_an_episode_goes_through_approach_grasp_carry_and_place() -> None:
    lifts = [0.0, 0.0, 0.001, 0.01, 0.08, 0.12, 0.1, 0.02, 0.015]
    closed = [False, False, True, True, True, True, True, True, False]
    assert episode_phases(lifts, closed) == ["approach", "approach", "grasp", "grasp", "carry", "carry", "carry",
                                             "place", "place"]
    # a grasp that opens again before lifting anything is an approach again; a bump while open is no lift
    assert episode_phases([0.0, 0.0, 0.0, LIFTED + 0.01], [False, True, False, False]) == [
        "approach", "grasp", "approach", "approach"]
    with pytest.raises(ValueError):
        episode_phases([0.0], [False, True])


def test_the_picked_object_is_the_first_to_leave_the_table() -> None:
    assert picked_object([{"target": 0.0, "same_category": 0.0}, {"target": 0.01}]) == "none"
    assert picked_object([{"target": 0.0, "same_category": PICKED + 0.01}, {"target": 0.2}]) == "same_category"
    assert picked_object([{"target": PICKED + 0.02, "same_category": PICKED + 0.01}]) == "target"
    assert picked_object([{"target": PICKED + 0.1}]) == "target"  # a scene without a same-category object


def test_clustered_logistic_regression_recovers_a_known_slope() -> None:
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(12), 40)
    x = rng.normal(size=clusters.size) + rng.normal(size=12)[clusters]  # the feature clusters too
    y = rng.random(clusters.size) < 1 / (1 + np.exp(-(0.2 + 1.0 * x)))
    fit = logistic_regression_clustered(x, y, clusters)
    assert fit.ci95[0] < 1.0 < fit.ci95[1] and fit.p < 1e-4 and fit.slope > 0.5
    assert (fit.n, fit.n_clusters, fit.events) == (480, 12, int(y.sum()))
    assert "12 clusters" in fit.note
    null = logistic_regression_clustered(rng.normal(size=480), y, clusters)  # a feature unrelated to y
    assert abs(null.slope) < fit.slope / 2 and null.p > 1e-3


def test_what_cannot_be_estimated_says_why() -> None:
    x = np.linspace(-1, 1, 20)
    clusters = np.repeat(["a", "b"], 10)
    assert "outcome constant (0 events of 20)" in logistic_regression_clustered(x, np.zeros(20), clusters).note
    assert logistic_regression_clustered(np.ones(20), x > 0, clusters).note == "feature constant"
    few = logistic_regression_clustered(x, np.arange(20) % 3 == 0, clusters)
    assert few.note == "not estimable: 2 clusters, expected at least 3" and np.isnan(few.p)
    separated = logistic_regression_clustered(x, x > 0, np.repeat(["a", "b", "c", "d"], 5))
    assert np.isnan(separated.slope) and separated.note.startswith("not estimable")
    with pytest.raises(InputError, match="^logistic_regression_clustered: got 20 features, 19 outcomes"):
        logistic_regression_clustered(x, np.zeros(19), clusters)
