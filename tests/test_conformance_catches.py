"""The conformance suites can fail: each deliberately broken plugin in tests/broken_plugins
is run through its kind's suite in a pytester session, and the checks of the guarantee it
breaks fail (the others may pass)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import LFW_DEV

pytest_plugins = ["pytester"]

BROKEN = Path(__file__).parent / "broken_plugins"


def _failed(pytester: pytest.Pytester, name: str) -> set[str]:
    """The names of the suite's tests that failed for broken plugin ``name``."""
    pytester.makepyfile(**{f"test_{name}": (BROKEN / f"broken_{name}.py").read_text()})
    recorder = pytester.inline_run("-p", "no:cacheprovider", f"--frip-faces={LFW_DEV}")
    _, _, failed = recorder.listoutcomes()
    return {report.nodeid.rpartition("::")[2] for report in failed}


@pytest.mark.parametrize(
    ("name", "failing"),
    [
        ("he_backend", ["test_decisions_equal_the_plaintext_reference"]),
        (
            "key_store",
            ["test_the_secret_is_never_written_in_the_clear", "test_a_tampered_store_is_refused"],
        ),
        (
            "extractor",
            [
                "test_a_face_gives_a_finite_unit_vector_of_its_dimension",
                "test_an_image_without_a_face_is_refused_with_no_face_error",
            ],
        ),
        (
            "adapter",
            [
                "test_truncated_and_padded_templates_are_refused",
                "test_corrupted_templates_are_refused",
            ],
        ),
        ("gallery_store", ["test_a_kill_during_a_commit_leaves_one_whole_state"]),
    ],
)
def test_the_suite_fails_a_plugin_that_breaks_a_guarantee(
    pytester: pytest.Pytester, name: str, failing: list[str]
) -> None:
    if name == "extractor" and not LFW_DEV.is_dir():
        pytest.skip(f"the extractor suite needs real faces: lfw-dev is missing at {LFW_DEV}")
    failed = _failed(pytester, name)
    assert set(failing) <= failed, f"only {sorted(failed)} failed"
