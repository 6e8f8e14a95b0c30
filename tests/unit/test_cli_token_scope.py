"""``treeline --token`` holds for one invocation only.

The CLI runs in-process in tests (``treeline_cli.main.main``): a token given to one invocation
must not be picked up by a later :class:`RootClient` of the same process, which then sent a
token signed by another root and got 401 ``invalid token signature`` (31 stack tests of a CI run
failed after an in-process CLI test with ``--token``).
"""

from __future__ import annotations

import pytest

from treeline_cli import root_client
from treeline_cli.main import main


@pytest.mark.parametrize("argv", [["--version"], ["get", "apps", "--root-url", "http://127.0.0.1:9"]])
def test_a_token_given_to_one_invocation_does_not_outlive_it(argv: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    main(["--token", "from-an-earlier-invocation", *argv])  # succeeds or fails: either way it ends
    capsys.readouterr()
    assert root_client.token_override is None
    client = root_client.RootClient("http://127.0.0.1:9")
    client._resolve_token()
    assert client._token != "from-an-earlier-invocation"
