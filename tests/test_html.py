"""Rich display in Jupyter: the HTML summaries of Campaign, Twin and FitResult render, say what matters, escape text."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pytest

from cgt_twin import read_campaign
from cgt_twin._html import campaign_html, fit_result_html, table_html, twin_html
from cgt_twin.fit import FitResult
from cgt_twin.hybrid import DEFAULT_RESIDUALS, hybrid
from cgt_twin.models import CHOFedBatch, Twin


class _Checker(HTMLParser):
    """Collects text and checks that every opened tag of the kinds we emit is closed."""

    PAIRED = {"div", "table", "thead", "tbody", "tr", "td", "th", "details", "summary", "ul", "li", "b", "code", "span"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.PAIRED:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.PAIRED:
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(markup: str) -> str:
    checker = _Checker()
    checker.feed(markup)
    checker.close()
    assert not checker.stack, f"unclosed tags {checker.stack}"
    return " ".join(checker.text)


@pytest.fixture(scope="module")
def campaign(example_folder):
    return read_campaign(example_folder)


def test_campaign_html(campaign):
    markup = campaign._repr_html_()
    assert markup == campaign_html(campaign)
    text = _parse(markup)
    assert "3 batches" in text and "cho: 3" in text
    for batch in campaign.batches:
        assert batch in text
    for variable in campaign.variables:
        assert variable in text
    assert campaign.unit("glucose") in text
    assert "feed fraction" in text  # a covariate column


def test_campaign_html_escapes_text(campaign):
    from cgt_twin.data.campaign import Campaign

    evil = Campaign(campaign.data, campaign.censored, campaign.protocols, campaign.media, campaign.declared,
                    notes=("<script>alert(1)</script>",), source="<b>x</b>&y")
    markup = evil._repr_html_()
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert "<b>x</b>" not in markup and "&lt;b&gt;x&lt;/b&gt;&amp;y" in markup
    _parse(markup)


def test_twin_html_parameters_units_noise():
    twin = Twin(CHOFedBatch()).with_params(mu_max=0.05).with_noise({"glucose": (0.5, 0.05)})
    text = _parse(twin._repr_html_())
    assert "CHOFedBatch" in text and "cell type cho" in text
    for spec in CHOFedBatch().parameters:
        assert spec.name in text
    assert "1/h" in text
    assert "0.05 *" in text  # changed from its default, flagged
    assert "glucose" in text and "noise model (1 variables)" in text
    assert "none (unfitted twin)" in _parse(Twin(CHOFedBatch())._repr_html_())


def test_twin_html_hybrid_and_draws():
    kinetics = hybrid(CHOFedBatch(), DEFAULT_RESIDUALS["cho"])
    twin = Twin(kinetics)
    text = _parse(twin_html(twin))
    assert "neural residual on CHOFedBatch" in text and "weights" in text
    draws = Twin(CHOFedBatch(), {"mu_max": np.array([0.03, 0.04, 0.05])})
    assert "3 draws" in _parse(twin_html(draws))


def test_fit_result_html():
    twin = Twin(CHOFedBatch()).with_noise({"vcd": (0.1, 0.05)})
    result = FitResult(twin=twin, initial_states={"B1": {"vcd": 0.3}}, noise={"vcd": (0.1, 0.05)}, objective=123.456,
                       starts=[123.456, 130.0], metrics={"B1": {"vcd": (0.05, 14), "glucose": (0.1, 14)},
                                                         "B2": {"vcd": (0.07, 14)}},
                       standard_errors={"mu_max": 0.1, "K_glc": 2.5, "q_p": math.nan}, correlations=np.eye(3),
                       not_identifiable=("K_glc", "q_p"), batches=("B1", "B2"), seconds=3.2, status="ok")
    markup = fit_result_html(result)
    text = _parse(markup)
    assert "status" in text and "ok" in text and "123.456" in text
    assert "mu_max" in text and "K_glc" in text and "1/h" in text
    assert text.count("not identifiable") == 1 + 2  # the heading counts them, then one flag per parameter
    assert "2 not identifiable" in text
    assert "×/÷ 1.11" in text  # exp(0.1)
    assert "B2" in text and "0.07" in text and "—" in text  # B2 has no glucose


def test_table_html_escapes_unless_raw():
    assert "&lt;i&gt;" in table_html(["a"], [["<i>"]])
    assert "<i>" in table_html(["a"], [["<i>"]], raw=True)
