"""Every example runs in its smoke mode (`natgrad_vs_sgd` only with `-m slow`)."""

import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sntk_of_your_model():
    pairs, pr = _load("sntk_of_your_model").main(smoke=True)
    assert float(pairs.values[0]) > 0 and float(pr.estimate) >= 1.0


@pytest.mark.slow  # ~85 s of compiles on 2 cores; tests/test_natgrad.py covers the optimizer
def test_natgrad_vs_sgd():
    sgd, ng = _load("natgrad_vs_sgd").main(smoke=True)
    assert len(sgd) == len(ng) and ng[-1] < ng[0]


def test_bifurcation_diagram(tmp_path):
    path = _load("bifurcation_diagram").main(smoke=True, out=str(tmp_path / "diagram.png"))
    assert os.path.getsize(path) > 0
