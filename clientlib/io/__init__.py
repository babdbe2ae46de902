"""I/O shells the peers share over the kernel's sans-I/O cores (the etcd transport).

A layer of its own so that the gateway and the backends, which must not import each
other, need not copy it; the client library proper does not use it.
"""
