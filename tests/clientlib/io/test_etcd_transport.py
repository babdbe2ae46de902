"""etcd over https and with etcd's authentication, through the gateway's transport."""

from __future__ import annotations

import pytest

from clientlib.io.etcd_transport import etcd_client
from clientlib.kernel.etcd import EtcdError
from loadtest.services import EtcdCluster, missing
from tests.gateway.gwproc import make_cert

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd"))),
]


async def test_https_and_authentication(tmp_path):
    cert, key = make_cert(tmp_path, "etcd", "IP:127.0.0.1")
    cluster = EtcdCluster(tmp_path / "etcd", tls=(cert, key)).start()
    clients = []
    try:
        plain, t = etcd_client(cluster.endpoints, ca_file=str(cert))
        clients.append(t)
        await plain.put("/a/k", b"v")
        assert (await plain.get("/a/k"))[0][0].value == b"v"
        # Turn etcd's authentication on (a root user with the root role).
        for path, body in (
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/add", {"name": "root", "password": "pw"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/enable", {}),
        ):
            await plain._call(path, body)
        with pytest.raises(EtcdError):
            await plain.put("/a/k", b"anyone")
        authed, t = etcd_client(cluster.endpoints, ca_file=str(cert), user="root", password="pw")
        clients.append(t)
        await authed.put("/a/k", b"root")
        authed._token = "expired"  # an old token is replaced once, then the call goes on
        kvs, _ = await authed.get("/a/", prefix=True)
        assert [kv.value for kv in kvs] == [b"root"]
        async for batch in authed.watch("/a/", prefix=True, start_revision=1):
            assert batch.events or batch.created
            break
        wrong, t = etcd_client(cluster.endpoints, ca_file=str(cert), user="root", password="no")
        clients.append(t)
        with pytest.raises(EtcdError):
            await wrong.get("/a/k")
    finally:
        for t in clients:
            await t.close()
        cluster.stop()
