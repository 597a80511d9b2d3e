"""JUnit XML for `attnscope check --junit` and `attnscope compare --junit`: one testcase per prompt ×
backend × check, so CI systems (GitHub Actions, GitLab, Jenkins) list every check and show a failure's
finding and figures."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from attnscope.inspector.report import Check, finite

# characters XML 1.0 cannot hold, even escaped: control characters but tab, newline and carriage
# return; lone surrogates; U+FFFE and U+FFFF
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """`text` with each character XML cannot hold written as a Python escape (a form feed: \\x0c)."""
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


def junit_xml(runs: list[tuple[int, str, str, list[Check]]], suite_name: str = "attnscope.check") -> str:
    """XML text for runs given as (prompt index, prompt, backend, checks), as one test suite. A
    testcase is named by the check, the prompt's index and the backend (``nan[prompt 1 · sdpa: import
    os]``), so the same prompt has the same number for every backend and every name is unique."""
    suites = ET.Element("testsuites", name="attnscope")
    cases = [c for *_, checks in runs for c in checks]
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=suite_name,
        tests=str(len(cases)),
        failures=str(sum(not c.passed for c in cases)),
        errors="0",
        skipped=str(sum(c.skipped is not None for c in cases)),
    )
    for n, prompt, backend, checks in runs:
        for check in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=xml_text(f"attnscope.{backend}"),
                name=xml_text(f"{check.name}[prompt {n} · {backend}: {prompt[:40]}]"),
            )
            if check.skipped is not None:
                ET.SubElement(case, "skipped", message=xml_text(check.skipped))
            bisected = check.figures.get("bisect")  # `check --bisect`: what the bisection found
            message = check.message + (f" · bisect: {bisected['summary']}" if bisected else "")
            if not check.passed:
                failure = ET.SubElement(case, "failure", message=xml_text(message), type=check.name)
                failure.text = json.dumps(
                    finite({"where": check.where, "figures": check.figures}), indent=2, allow_nan=False
                )
            ET.SubElement(case, "system-out").text = xml_text(message)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
