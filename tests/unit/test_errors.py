"""errors.causes: the one walk through what an exception wraps (cause, context, reason, arguments)."""

import ssl

from cdlib.errors import causes
from cdlib.store.base import tls_failure


class Wrapper(Exception):
    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason


def chain():
    low = ConnectionRefusedError(111, "Connection refused")
    pool = Wrapper("max retries", reason=low)  # urllib3's MaxRetryError keeps the cause in .reason
    top = RuntimeError(pool)  # requests passes the urllib3 error as an argument
    try:
        try:
            raise top
        except RuntimeError as exc:
            raise ValueError("translated") from exc
    except ValueError as exc:
        return exc, top, pool, low


def test_causes_walks_cause_context_reason_and_arguments_once():
    outer, top, pool, low = chain()
    found = list(causes(outer))
    assert found[0] is outer
    assert {id(x) for x in found} == {id(outer), id(top), id(pool), id(low)}
    assert len(found) == 4


def test_causes_survives_cycles_and_odd_values():
    a, b = Exception("a"), Exception("b")
    a.__cause__, b.__context__ = b, a
    assert list(causes(a)) == [a, b]
    odd = Wrapper("x", reason="a string, not an exception")
    assert list(causes(odd)) == [odd]
    assert list(causes(None)) == []


def test_tls_failure_finds_a_wrapped_ssl_error():
    inner = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    inner.reason = "CERTIFICATE_VERIFY_FAILED"
    outer = RuntimeError(Wrapper("max retries", reason=inner))
    assert tls_failure(outer) == "certificate verify failed"
    assert tls_failure(chain()[0]) is None


def test_a_reset_is_a_tls_failure_only_when_it_broke_the_handshake():
    # a reset of a connection whose TLS was already up (or that never used TLS) is a transport failure
    def recv():
        raise ConnectionResetError(104, "Connection reset by peer")

    try:
        recv()
    except ConnectionResetError as exc:
        assert tls_failure(RuntimeError(Wrapper("aborted", reason=exc))) is None


def test_the_transport_reason_of_a_docker_error_is_found_the_same_way():
    from cdlib.runtime.docker import _transport_reason

    assert _transport_reason(chain()[0]) == "connection refused"
