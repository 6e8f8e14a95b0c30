"""The operator web UI in a real browser (issue 12): Playwright for Python driving Debian's
Chromium against a real stack (Mosquitto, root, cluster, three node engines as processes).

One scenario, in the order an operator lives it: sign in; see three nodes online; submit the
MobileNetV2 SLA through the form (split over the three nodes by the FLOPs-balanced profile so
the placement has several stages); see it reach RUNNING and its placement strip show one colour
per node; submit a broken SLA and see the field error beside the line of that field; kill a
node engine and see it go offline, the re-plan event appear and the placement change.

Screenshots go to ``$TREELINE_TEST_ARTIFACTS`` (default ``test-artifacts/``), under ``ui/``.
Skipped only where Chromium is not installed (``make test`` installs it with apt-get).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treeline_test_helpers import running_stack

from treeline_cli.broker import BrokerProcess
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(os.environ.get("TREELINE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
OBJECTIVE = "applications[0].microservices[0].model.objective"
DEPLOY_S = 150_000  # ms: export-free deploy of three partitions on a loaded 2-core machine
REPLAN_S = 90_000


@pytest.fixture(scope="module")
def browser_path() -> str:
    pytest.importorskip("playwright")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (make test installs it: apt-get install -y chromium)")
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@pytest.fixture(scope="module")
def stack(mqtt_broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("ui-stack"), nodes=3, mqtt_url=mqtt_broker.url,
                       telemetry_interval=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def registered(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> RootClient:
    pytest.importorskip("torch")
    import model_zoo

    root = RootClient(stack.root_url)
    root.register_model("mobilenet_v2", model_zoo.cached_onnx("mobilenet_v2", tmp_path_factory.mktemp("models")))
    return root


def _shot(page: Any, name: str) -> None:
    folder = ARTIFACTS / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _set_sla(page: Any, edit: Any) -> str:
    """Load the example into the editor, apply ``edit`` to its JSON, put the result back; the text."""
    page.click("#tab-submit")
    page.click("#load-example")
    page.wait_for_function("document.querySelector('#sla-editor').value.includes('mobilenet_v2')")
    sla = json.loads(page.input_value("#sla-editor"))
    edit(sla["applications"][0]["microservices"][0])
    text = json.dumps(sla, indent=2)
    page.fill("#sla-editor", text)
    return text


def _strip_nodes(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#placement-strip rect.stage", "els => els.map(e => e.dataset.node)"))


def test_operator_journey_in_chromium(browser_path: str, stack: Stack, registered: RootClient) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # sign in (a wrong password first: the error is shown, nothing else)
            page.goto(f"{stack.root_url}/ui/")
            page.fill("#username", "Admin")
            page.fill("#password", "wrong")
            page.click("#login-submit")
            expect(page.locator("#login-error")).to_contain_text("invalid")
            page.fill("#password", "Admin")
            page.click("#login-submit")

            # three nodes online, emulated ones marked
            expect(page.locator("#nodes tbody tr[data-online='true']")).to_have_count(3, timeout=30_000)
            expect(page.locator("#nodes tbody tr[data-node='rpi4-1'] .badge.emu")).to_be_visible()
            _shot(page, "1-fleet")

            # the MobileNetV2 SLA through the form, split over the three nodes
            _set_sla(page, lambda svc: svc["model"].update(scheduler_profile="flops-balanced"))
            page.click("#sla-apply")
            expect(page.locator("#sla-result")).to_contain_text("vision: created")
            row = page.locator("#services tbody tr[data-service='classifier']")
            expect(row).to_have_attribute("data-status", "RUNNING", timeout=DEPLOY_S)
            row.click()
            expect(page.locator("#placement-strip rect.stage")).to_have_count(3, timeout=30_000)
            nodes = _strip_nodes(page)
            fills = page.eval_on_selector_all("#placement-strip rect.stage", "els => els.map(e => e.getAttribute('fill'))")
            assert len(set(nodes)) == 3 and len(set(fills)) == 3, (nodes, fills)  # one colour per node
            expect(page.locator("#explanation tbody tr")).to_have_count(3)
            _shot(page, "2-deployment")
            page.reload()  # the open deployment is in the URL: a reload (or a shared link) keeps it
            expect(page.locator("#placement-strip rect.stage")).to_have_count(3, timeout=30_000)

            # a broken SLA: the error sits beside the line of the field it names
            text = _set_sla(page, lambda svc: svc["model"].update(objective="fastest"))
            page.click("#sla-plan")
            note = page.locator(f".field-error[data-path='{OBJECTIVE}']")
            expect(note).to_be_visible()
            expect(note).to_contain_text("objective")
            line = next(i for i, s in enumerate(text.splitlines(), 1) if '"objective"' in s)
            assert note.get_attribute("data-line") == str(line)
            editor, box = page.locator("#sla-editor").bounding_box(), note.bounding_box()
            assert editor is not None and box is not None
            line_top = editor["y"] + 6 + (line - 1) * 18 - page.eval_on_selector("#sla-editor", "e => e.scrollTop")
            assert abs(box["y"] - line_top) <= 4, (box, line_top)
            _shot(page, "3-sla-error")

            # kill a node engine that serves a stage: offline, a re-plan event, a new placement
            page.click("#tab-deployments")
            row.click()
            victim = nodes[-1]
            stack.kill(f"node-{victim}")
            expect(page.locator(f"#nodes tbody tr[data-node='{victim}']")).to_have_attribute(
                "data-online", "false", timeout=REPLAN_S)
            expect(page.locator("#events li[data-kind='replan']").first).to_be_visible(timeout=REPLAN_S)
            page.wait_for_function(
                f"""() => {{ const n = [...document.querySelectorAll('#placement-strip rect.stage')]
                          .map(e => e.dataset.node);
                          return n.length > 0 && !n.includes({json.dumps(victim)}); }}""", timeout=REPLAN_S)
            expect(row).to_have_attribute("data-status", "RUNNING", timeout=REPLAN_S)
            _shot(page, "4-replanned")
            assert victim not in _strip_nodes(page)
            assert not errors, errors
        finally:
            browser.close()
