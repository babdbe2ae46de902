"""One client against the backend that owns it: memory stays bounded, witnesses exact."""

import pytest

from loadtest.attack_backend import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize("kind", ["nested", "no-ack"])
async def test_one_client_cannot_run_a_backend_out_of_memory(kind):
    r = await run(kind, duration=4.0, baseline=2.0, witnesses=4, megabytes=12)
    assert r["attacker"]["sent_mib"] >= 1
    assert r["rss_growth_mib"] <= 16
    assert r["witnesses_exact"] and r["witness_errors"] == 0
