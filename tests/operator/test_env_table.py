"""The env table (facepipe.operator.envmap) says what each component's code really reads."""

from __future__ import annotations

import pytest
from kubekit import SCAN_OVERREACH, code_reads, component_reads

from facepipe.operator.constants import COMPONENTS
from facepipe.operator.envmap import PER_COMPONENT, READERS, primary_env_names, reads


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_setting_the_code_reads_reaches_the_component(component: str) -> None:
    """E.g. the indexer checks MODEL_PACK (model_pack_mismatch, the collection's size): its pods need it."""
    missing = sorted(name for name in component_reads(component) if not reads(component, name))
    assert missing == []
    assert reads(component, "MODEL_PACK")


@pytest.mark.parametrize("component", COMPONENTS)
def test_no_component_gets_a_setting_its_code_never_reads(component: str) -> None:
    """Extra readers roll pods for nothing (a maxHamming change must not restart the detector)."""
    code = code_reads(component)
    extra = sorted(name for name, who in READERS.items() if component in who and name not in code)
    assert extra == []


def test_overreach_list_is_current() -> None:
    for component, names in SCAN_OVERREACH.items():
        assert names <= code_reads(component), "the scan no longer sees these: drop them from the list"
        assert not any(reads(component, name) for name in names)


def test_the_table_names_every_setting_once() -> None:
    assert set(READERS) == set(primary_env_names())
    assert set(READERS) >= PER_COMPONENT
