"""The pool policy alone: how many machines to request, how a provision
command's output is read, and the retry backoff."""

from __future__ import annotations

import re

import pytest

from batchctl.model.pools import (
    Address,
    BadProvisionOutput,
    PoolSpec,
    parse_address,
    retry_delay,
    to_request,
)


def test_requests_cover_the_waiting_items_beyond_the_machines_coming_up_to_max() -> None:
    def request(demand: int, coming: int = 0, alive: int = 0, minimum: int = 0) -> int:
        return to_request(
            demand=demand, slots=2, coming=coming, alive=alive, minimum=minimum, maximum=3
        )

    assert request(0) == 0
    assert request(1) == 1
    assert request(5) == 3  # 3 machines of 2 slots; never past max
    assert request(9) == 3
    assert request(4, coming=2, alive=2) == 0  # what is coming takes them
    assert request(6, coming=1, alive=2) == 1
    assert request(0, minimum=2) == 2  # min is kept without demand
    assert request(0, alive=1, minimum=2) == 1
    assert request(9, alive=3) == 0


def test_the_address_is_the_last_line_of_the_output_as_json() -> None:
    output = 'starting...\n{"host": "10.0.0.7", "port": 2222, "id": "i-0abc"}\n\n'
    assert parse_address(output) == Address(host="10.0.0.7", port=2222, id="i-0abc")
    assert parse_address('{"host": "h", "user": "ci", "workdir": "/w"}') == Address(
        host="h", user="ci", workdir="/w"
    )


@pytest.mark.parametrize(
    ("output", "said"),
    [
        ("", "printed nothing"),
        ("ready\n", "last line is not JSON: 'ready'"),
        ('{"port": 22}', "no 'host'"),
        ('{"host": "h", "port": 70000}', "'port' is not a port number: 70000"),
        ('{"host": "h", "port": "22"}', "'port' is not a port number: '22'"),
        ('["h"]', "no 'host'"),
    ],
)
def test_output_without_an_address_is_refused_saying_why(output: str, said: str) -> None:
    with pytest.raises(BadProvisionOutput, match=re.escape(said)):
        parse_address(output)


def test_retries_back_off_doubling_up_to_the_cap() -> None:
    assert [retry_delay(n, 5, 30) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def test_a_pool_serves_its_tags_and_its_machines_by_name() -> None:
    pool = PoolSpec(name="cloud", tags=("linux", "big"), provision="p", deprovision="d")
    assert pool.serves("tag:big")
    assert pool.serves("machine:cloud-3")
    assert not pool.serves("tag:gpu")
    assert not pool.serves("machine:cloudy")
