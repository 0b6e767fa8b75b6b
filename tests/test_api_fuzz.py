"""Schemathesis against a live `itmatch serve` on 127.0.0.1: generated requests for every operation of the OpenAPI
schema get no server error, and their status codes, content types and bodies are the ones the schema documents."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings

from local_server import free_port
from search_support import picture_index, wait_until_serving

EXAMPLES = 30  # per operation: about 20 s in all on two busy cores


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """`itmatch serve` in its own process on a free local port; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"  # a file, not a pipe: a full pipe would stall the server
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "itmatch", "serve", "--index", str(picture_index()), "--port",
                               str(port), "--shortlist", "6", "--threads", "1", "--max-upload-mb", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=(sink := log.open("wb")))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, server, lambda: log.read_text(errors="replace")[-2000:])
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        sink.close()


@pytest.fixture(scope="module")
def api_schema(live_server):
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")


def test_every_operation_conforms_to_the_schema(api_schema):
    # One Hypothesis run per operation (schemathesis' own pytest plugin needs pytest internals that pytest 9 lacks).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /search", "POST /search/image", "GET /images/{image}",
                                               "GET /explain", "GET /health"}
    for operation in operations:
        # A schema cannot say "a decodable picture" or "a word of the vocabulary": generated files (415) and texts
        # of unknown words only (422) are refused though schema-valid; every other check holds for these operations
        # too, and tests/test_search_api.py sends real pictures and words.
        refused = ("POST /search/image", "GET /search", "GET /explain")
        excluded = [positive_data_acceptance] if operation.label in refused else []

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(excluded_checks=excluded)

        conforms()


def test_a_huge_content_length_is_refused_before_the_body_is_sent(live_server):
    port = int(live_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 524288000\r\n\r\n")
        answer = b""
        while chunk := connection.recv(4096):  # no body sent: the answer comes anyway, and the server hangs up
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'\r\n\r\n{"error": "the picture is larger than 1 MiB; send a smaller one"}')
