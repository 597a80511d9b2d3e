"""JUnit XML for `attnscope check --junit` and `attnscope compare --junit`: one testcase per prompt ×
backend × check, so CI systems (GitHub Actions, GitLab, Jenkins) list every check and show a failure's
finding and figures."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from attnscope.inspector.report import Check


def junit_xml(runs: list[tuple[str, str, list[Check]]], suite_name: str = "attnscope.check") -> str:
    """XML text for runs given as (prompt, backend, checks), as one test suite."""
    suites = ET.Element("testsuites", name="attnscope")
    cases = [(p, b, c) for p, b, checks in runs for c in checks]
    suite = ET.SubElement(suites, "testsuite", name=suite_name, tests=str(len(cases)),
                          failures=str(sum(not c.passed for _, _, c in cases)), errors="0", skipped="0")
    for n, (prompt, backend, checks) in enumerate(runs):
        for check in checks:
            case = ET.SubElement(suite, "testcase", classname=f"attnscope.{backend}",
                                 name=f"{check.name}[prompt {n}: {prompt[:40]}]")
            if not check.passed:
                failure = ET.SubElement(case, "failure", message=check.message, type=check.name)
                failure.text = json.dumps({"where": check.where, "figures": check.figures}, indent=2)
            ET.SubElement(case, "system-out").text = check.message
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
