"""The project's check of intrinsic-function string literals (infra/asl_lint.py), on expressions and definitions."""

from __future__ import annotations

import pytest

from infra import asl_lint


@pytest.mark.parametrize("expression", [
    "States.Format('cxr-{}-{}', $$.State.RetryCount, States.UUID())",
    "States.Format('s3://cxr-dev-data/models/{}/', $.request.run_id)",
    r"States.Format('it\'s {} o\'clock', $.hour)",
    r"States.StringToJson('\{\"a\": 1\}')".replace('\\"', '"'),  # escaped braces, plain double quotes
    r"States.Format('C:\\temp\\{}', $.name)",  # an escaped backslash, then the placeholder
    r"States.Format('\{\} is literal, {} is not', $.x)",
    "States.JsonMerge($.defaults, $.request, false)",
    "States.MathAdd($.retries.train, -1)",
    "States.Array('a', 1.5, null, true, $['key with space'], $.list[0], $$.Execution.Input)",
    "States.UUID()",
    "  States.Hash($.data, 'SHA-256')  ",
])
def test_what_aws_accepts_passes(expression):
    assert asl_lint.check_expression(expression) == []


@pytest.mark.parametrize("expression, problem", [
    ("States.JsonMerge(States.StringToJson('{\"hyperparameters\": {}}'), $, false)", "unescaped { in string literal"),
    ("States.StringToJson('{}')", "only States.Format takes {} placeholders"),
    ("States.Format('{ {}', $.a)", "unescaped { in string literal (write \\{)"),
    ("States.Format('{}}', $.a)", "unescaped } in string literal"),
    (r"States.Format('C:\temp {}', $.a)", "unescaped \\ in string literal"),
    ("States.Format('trailing \\', $.a)", "unterminated string literal"),  # the backslash escapes the closing quote
    ("States.Format('it's {}', $.a)", "is a ' in a string literal unescaped?"),
    ("States.Format('cxr-{}-{}', States.UUID())", "2 {} placeholder(s) and 1 value(s)"),
    ("States.Format('no placeholder', $.a)", "0 {} placeholder(s) and 1 value(s)"),
    ("States.Format('x', $.a", "expected , or )"),
    ("States.Format('x', $.a) extra", "after the call"),
    ("States.Array(undefined)", "unexpected argument 'undefined'"),
    ("Format('x')", "expected States.<Function>("),
])
def test_what_aws_refuses_is_found_and_named(expression, problem):
    problems = asl_lint.check_expression(expression)
    assert any(problem in p for p in problems), problems


def test_each_problem_is_reported_once_per_expression():
    assert len(asl_lint.check_expression("States.StringToJson('{{{')")) == 1


DEFINITION = {
    "Comment": "States.StringToJson('{}') in a comment is text, not an intrinsic",
    "StartAt": "P",
    "States": {
        "P": {"Type": "Parallel", "Next": "M", "Branches": [{"StartAt": "T", "States": {"T": {
            "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke", "End": True,
            "Parameters": {"Payload": {"items": [{"bad.$": "States.StringToJson('{}')"}], "path.$": "$.x"}},
            "ResultSelector": {"ok.$": "States.Format('{}', $.y)"},
        }}}]},
        "M": {"Type": "Map", "ItemsPath": "$.items", "End": True,
              "ItemProcessor": {"StartAt": "I", "States": {"I": {
                  "Type": "Pass", "End": True, "Parameters": {"also.$": "States.Format('{', $.z)"}}}}},
        "F": {"Type": "Fail", "ErrorPath": "States.Format('{}', $.error)"},
    },
}


def test_expressions_are_found_wherever_a_definition_nests_them():
    found = dict(asl_lint.intrinsic_expressions(DEFINITION))
    assert set(found) == {
        "/States/P/Branches/0/States/T/Parameters/Payload/items/0/bad.$",
        "/States/P/Branches/0/States/T/ResultSelector/ok.$",
        "/States/M/ItemProcessor/States/I/Parameters/also.$",
        "/States/F/ErrorPath",
    }  # not the Comment, not the plain path $.x


def test_findings_name_the_location_and_the_expression():
    findings = asl_lint.check(DEFINITION)
    assert {f.location for f in findings} == {"/States/P/Branches/0/States/T/Parameters/Payload/items/0/bad.$",
                                              "/States/M/ItemProcessor/States/I/Parameters/also.$"}
    assert str(findings[0]).startswith("/States/P/Branches/0/States/T/Parameters/Payload/items/0/bad.$: unescaped {")
    assert findings[0].expression == "States.StringToJson('{}')"
