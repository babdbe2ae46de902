"""The admin API of a real gateway process: a token always guards it."""

from __future__ import annotations

import stat

import pytest

from tests.gateway.gwproc import gateway_process, plain_server

pytestmark = pytest.mark.timeout(60)

WRITES = [
    ("POST", "/v1/drain", None),
    ("POST", "/v1/undrain", None),
    ("POST", "/v1/rebalancer/pause", None),
    ("POST", "/v1/move", {"key": "k", "to": "node-1"}),
    ("POST", "/v1/nodes/node-1/drain", None),
]
READS = ["/metrics", "/v1/status", "/v1/nodes", "/v1/table", "/v1/connections", "/v1/moves"]


async def test_without_a_configured_token_writes_need_the_generated_one(tmp_path):
    async with gateway_process(tmp_path, "--control-secret", "c" * 32, token=None) as gw:
        for method, path, body in WRITES:
            status, _ = await gw.admin(method, path, body)
            assert status == 401, (method, path)
            status, _ = await gw.admin(method, path, body, token="wrong" * 8)
            assert status == 401, (method, path)
        for path in READS:
            assert (await gw.admin("GET", path))[0] == 401, path
        for path in ("/healthz", "/readyz"):
            assert (await gw.admin("GET", path))[0] in (200, 503), path
        assert gw.proc.poll() is None  # the drain above did not happen
        token_file = tmp_path / "state" / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        log = gw.log.read_text()
        assert str(token_file) in log and token not in log
        assert (await gw.admin("GET", "/v1/status", token=token))[0] == 200
        assert (await gw.admin("POST", "/v1/rebalancer/pause", token=token))[0] == 200


async def test_each_start_writes_a_new_token(tmp_path):
    async with plain_server() as b:
        tokens = []
        for _ in range(2):
            async with gateway_process(tmp_path, "--static-backend", b, token=None) as gw:
                token = (tmp_path / "state" / "admin.token").read_text().strip()
                status, body = await gw.admin("POST", "/v1/drain", token=token)
                assert status == 202 and body["exit"] is True
                assert await gw.exited(20) == 0
                tokens.append(token)
        assert tokens[0] != tokens[1]


async def test_configured_token_is_used_and_no_file_is_written(tmp_path):
    async with plain_server() as b, gateway_process(tmp_path, "--static-backend", b) as gw:
        assert (await gw.admin("GET", "/v1/status"))[0] == 200
        assert (await gw.admin("GET", "/v1/status", token="x" * 32))[0] == 401
        assert not (tmp_path / "state" / "admin.token").exists()
