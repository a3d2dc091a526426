"""Whose trace context is continued (TRACE_CONTEXT_TRUSTED_CALLERS, issue 18): a client
sending `traceparent` with the sampled flag chose to be traced, with a trace id of its
own choosing, bypassing the 10% sampler. Now only trusted callers' trace context is
continued; anyone else's request is a new root that the sampler decides on, linked to
the trace it claimed."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.sdk.trace import TracerProvider

from app.proxy_trust import trusted_networks
from app.settings import Settings
from app.telemetry.tracing import UNTRUSTED_LINK_ATTRIBUTES, Tracing
from parity.harness.stack import GunicornProcess
from tests.otlp_receiver import SERVER, OtlpReceiver
from tests.test_tracing import traceparent

TRUSTED_CALLER = "127.0.0.17"  # a traced upstream service
UNTRUSTED_CALLER = "127.0.0.1"  # any other client
SAMPLED = 0x01  # the trace-flags bit (the others: 0x02 says the trace id is random)


def tracing(trusted_callers: str) -> Tracing:
    provider = TracerProvider()
    propagator = get_global_textmap()
    return Tracing(
        provider=provider,
        tracer=provider.get_tracer("test"),
        propagator=propagator,
        header_names=frozenset(),
        trusted_callers=trusted_networks(trusted_callers),
    )


def claimed_context(sampled: bool = True) -> tuple[dict[str, str], str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return {"traceparent": traceparent(trace_id, span_id, sampled)}, trace_id, span_id


def test_a_trusted_callers_trace_context_is_continued() -> None:
    carrier, trace_id, span_id = claimed_context()
    parent, links = tracing(f"{TRUSTED_CALLER},10.0.0.0/8").parent_of(carrier, TRUSTED_CALLER)
    context = trace.get_current_span(parent).get_span_context()
    assert (format(context.trace_id, "032x"), format(context.span_id, "016x")) == (
        trace_id,
        span_id,
    )
    assert context.trace_flags.sampled
    assert links is None


@pytest.mark.parametrize(
    ("trusted", "client"),
    [
        ("", UNTRUSTED_CALLER),  # the default: nobody
        (TRUSTED_CALLER, UNTRUSTED_CALLER),
        ("10.0.0.0/8", "10.0.0.1."),  # not an address: not trusted
        (TRUSTED_CALLER, None),  # a Unix socket's peer
    ],
)
def test_an_untrusted_callers_trace_context_is_only_linked(trusted: str, client: str) -> None:
    """A new root (the sampler decides, on a trace id of ours), linked to the claimed
    trace so the two can still be found together."""
    carrier, trace_id, span_id = claimed_context()
    parent, links = tracing(trusted).parent_of(carrier, client)
    assert not trace.get_current_span(parent).get_span_context().is_valid
    assert links is not None
    (link,) = links
    assert (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) == (
        trace_id,
        span_id,
    )
    assert dict(link.attributes or {}) == UNTRUSTED_LINK_ATTRIBUTES


def test_every_caller_is_trusted_with_a_star() -> None:
    carrier, trace_id, _ = claimed_context()
    parent, links = tracing("*").parent_of(carrier, UNTRUSTED_CALLER)
    assert format(trace.get_current_span(parent).get_span_context().trace_id, "032x") == trace_id
    assert links is None


def test_a_malformed_traceparent_is_a_new_root_without_a_link() -> None:
    parent, links = tracing("").parent_of({"traceparent": "00-zz-yy-01"}, UNTRUSTED_CALLER)
    assert not trace.get_current_span(parent).get_span_context().is_valid
    assert links is None


def test_the_setting_refuses_what_is_not_an_address_or_network(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="is not an IP address or CIDR network"):
        make_settings(TRACE_CONTEXT_TRUSTED_CALLERS="upstream.local")


@pytest.mark.gunicorn
def test_a_sampled_traceparent_from_an_untrusted_client_does_not_force_sampling(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    """1. Gunicorn exporting to a real OTLP receiver, sampling 0% of new traces,
    TRACE_CONTEXT_TRUSTED_CALLERS=127.0.0.17
    2. an untrusted client sends a sampled `traceparent`  -> `traceresponse` names
    another trace, unsampled; nothing of its trace is exported (before: the claimed trace
    id, sampled and exported)
    3. the trusted caller sends one  -> continued, sampled and exported."""
    untrusted, untrusted_trace_id, _ = claimed_context()
    trusted, trusted_trace_id, caller_span_id = claimed_context()
    with OtlpReceiver() as receiver:
        server = gunicorn(
            workers=1,
            env={
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_SAMPLER_ARG": "0",
                "TRACE_CONTEXT_TRUSTED_CALLERS": TRUSTED_CALLER,
            },
        )
        url = f"{server.base_url}/api/v1/products?limit=1"
        from_untrusted = httpx.get(url, headers=untrusted)
        with httpx.Client(transport=httpx.HTTPTransport(local_address=TRUSTED_CALLER)) as client:
            from_trusted = client.get(url, headers=trusted)
        assert server.stop() == 0  # the shutdown flushes the queued spans
        spans = receiver.snapshot()
    assert from_untrusted.status_code == from_trusted.status_code == 200
    _, trace_id, _, flags = from_untrusted.headers["traceresponse"].split("-")
    assert trace_id != untrusted_trace_id
    assert not int(flags, 16) & SAMPLED
    assert not [span for span in spans if span.trace_id in (untrusted_trace_id, trace_id)]
    _, trace_id, _, flags = from_trusted.headers["traceresponse"].split("-")
    assert trace_id == trusted_trace_id
    assert int(flags, 16) & SAMPLED
    (server_span,) = [s for s in spans if s.trace_id == trusted_trace_id and s.kind == SERVER]
    assert server_span.parent_span_id == caller_span_id
